from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING, Any

from grpc import aio

from foretell.auth.principal import current_principal
from foretell.billing.payments import processor_for
from foretell.billing.settle import InvoiceStatus
from foretell.clock import timestamp as _ts
from foretell.db.models import (
    Forecast,
    Plan,
    Subscription,
    WebhookAttempt,
    WebhookDelivery,
    WebhookEndpoint,
)
from foretell.runtime.resources import Resources
from foretell.services.registry import require_name
from foretell.services.subscription import _queries, _validate, _webhooks
from foretell.subscription.v1 import subscription_service_pb2 as pb
from foretell.subscription.v1 import subscription_service_pb2_grpc as pb_grpc

if TYPE_CHECKING:
    # Generic only in the type stubs.
    Context = aio.ServicerContext[Any, Any]

_STATES = {
    "trialing": pb.SUBSCRIPTION_STATE_TRIALING,
    "incomplete": pb.SUBSCRIPTION_STATE_INCOMPLETE,
    "active": pb.SUBSCRIPTION_STATE_ACTIVE,
    "past_due": pb.SUBSCRIPTION_STATE_PAST_DUE,
    "canceled": pb.SUBSCRIPTION_STATE_CANCELED,
    "expired": pb.SUBSCRIPTION_STATE_EXPIRED,
}
_INVOICE_STATES = {
    "open": pb.INVOICE_STATE_OPEN,
    "paid": pb.INVOICE_STATE_PAID,
    "void": pb.INVOICE_STATE_VOID,
}


def plan_pb(model: str, plan: Plan) -> pb.Plan:
    return pb.Plan(
        model=model,
        price_minor=plan.price_minor,
        currency=plan.currency,
        trial_days=plan.trial_days,
        update_time=_ts(plan.updated_at),
    )


def subscription_pb(sub: Subscription, model: _queries.Named, grace: timedelta) -> pb.Subscription:
    return pb.Subscription(
        id=str(sub.id),
        model=model.name,
        model_title=model.title,
        subscriber_id=str(sub.subscriber_id),
        state=_STATES[sub.state],
        create_time=_ts(sub.created_at),
        trial_end_time=_ts(sub.trial_end),
        current_period_start_time=_ts(sub.period_start),
        current_period_end_time=_ts(sub.period_end),
        cancel_at_period_end=sub.cancel_at_period_end,
        end_time=_ts(sub.ended_at),
        end_reason=sub.end_reason or "",
        grace_end_time=_ts(sub.past_due_since + grace if sub.past_due_since else None),
    )


def invoice_pb(status: InvoiceStatus, model: _queries.Named) -> pb.Invoice:
    invoice = status.invoice
    return pb.Invoice(
        id=str(invoice.id),
        subscription_id=str(invoice.subscription_id),
        model=model.name,
        model_title=model.title,
        subscriber_id=str(invoice.subscriber_id),
        amount_minor=invoice.amount_minor,
        currency=invoice.currency,
        period_start_time=_ts(invoice.period_start),
        period_end_time=_ts(invoice.period_end),
        issue_time=_ts(invoice.issued_at),
        due_time=_ts(invoice.due_at),
        state=_INVOICE_STATES[status.state],
        credited_minor=status.credited_minor,
        amount_due_minor=status.amount_due_minor,
        paid_time=_ts(status.payment.paid_at if status.payment else None),
        credit_notes=[
            pb.CreditNote(
                id=str(note.id),
                amount_minor=note.amount_minor,
                reason=note.reason,
                issue_time=_ts(note.issued_at),
            )
            for note in status.credit_notes
        ],
    )


_DELIVERY_STATES = {
    "pending": pb.WEBHOOK_DELIVERY_STATE_PENDING,
    "delivered": pb.WEBHOOK_DELIVERY_STATE_DELIVERED,
    "failed": pb.WEBHOOK_DELIVERY_STATE_FAILED,
    "canceled": pb.WEBHOOK_DELIVERY_STATE_CANCELED,
}


def endpoint_pb(endpoint: WebhookEndpoint) -> pb.WebhookEndpoint:
    return pb.WebhookEndpoint(
        id=str(endpoint.id),
        subscription_id=str(endpoint.subscription_id),
        url=endpoint.url,
        description=endpoint.description,
        create_time=_ts(endpoint.created_at),
    )


def delivery_pb(
    delivery: WebhookDelivery, attempts: list[WebhookAttempt], forecast: Forecast | None
) -> pb.WebhookDelivery:
    return pb.WebhookDelivery(
        id=str(delivery.id),
        endpoint_id=str(delivery.endpoint_id),
        event_type=delivery.event_type,
        state=_DELIVERY_STATES[delivery.state],
        create_time=_ts(delivery.created_at),
        next_attempt_time=_ts(delivery.next_attempt_at if delivery.state == "pending" else None),
        deliver_time=_ts(delivery.delivered_at),
        attempts=[
            pb.WebhookAttempt(
                number=a.number,
                start_time=_ts(a.started_at),
                duration_ms=a.duration_ms,
                status_code=a.status_code or 0,
                error=a.error,
            )
            for a in attempts
        ],
        symbol=forecast.symbol if forecast else "",
        as_of_time=_ts(forecast.as_of if forecast else None),
    )


class SubscriptionServicer(pb_grpc.SubscriptionServiceServicer):
    def __init__(self, resources: Resources) -> None:
        self._res = resources

    def _billing(self) -> _queries.Billing:
        settings = self._res.settings
        return _queries.Billing(settings, processor_for(settings), self._res.clock())

    @property
    def _grace(self) -> timedelta:
        return timedelta(days=self._res.settings.billing_grace_days)

    async def GetPlan(self, request: pb.GetPlanRequest, context: Context) -> pb.GetPlanResponse:
        name, plan = await _queries.get_plan(
            self._res.db, current_principal(), require_name("model", request.model)
        )
        return pb.GetPlanResponse(plan=plan_pb(name, plan))

    async def UpdatePlan(
        self, request: pb.UpdatePlanRequest, context: Context
    ) -> pb.UpdatePlanResponse:
        given = _validate.update_plan(request)
        name, plan = await _queries.update_plan(
            self._res.db, current_principal(), given, self._res.clock()
        )
        return pb.UpdatePlanResponse(plan=plan_pb(name, plan))

    async def Subscribe(
        self, request: pb.SubscribeRequest, context: Context
    ) -> pb.SubscribeResponse:
        name = require_name("model", request.model)
        sub, invoice, model = await _queries.subscribe(
            self._res.db, current_principal(), name, self._billing()
        )
        return pb.SubscribeResponse(
            subscription=subscription_pb(sub, model, self._grace),
            invoice=invoice_pb(invoice, model) if invoice else None,
        )

    async def ListSubscriptions(
        self, request: pb.ListSubscriptionsRequest, context: Context
    ) -> pb.ListSubscriptionsResponse:
        model, page = _validate.list_subscriptions(request, self._res.page_tokens)
        rows, last = await _queries.list_subscriptions(
            self._res.db, current_principal(), model, page, self._billing()
        )
        return pb.ListSubscriptionsResponse(
            subscriptions=[subscription_pb(sub, name, self._grace) for sub, name in rows],
            next_page_token=self._res.page_tokens.keyset_token("subscriptions", model, last)
            if last
            else "",
        )

    async def GetSubscription(
        self, request: pb.GetSubscriptionRequest, context: Context
    ) -> pb.GetSubscriptionResponse:
        sub_id = _validate.required_id("id", request.id)
        sub, name = await _queries.get_subscription(
            self._res.db, current_principal(), sub_id, self._billing()
        )
        return pb.GetSubscriptionResponse(subscription=subscription_pb(sub, name, self._grace))

    async def CancelSubscription(
        self, request: pb.CancelSubscriptionRequest, context: Context
    ) -> pb.CancelSubscriptionResponse:
        sub_id = _validate.required_id("id", request.id)
        sub, name = await _queries.cancel(
            self._res.db, current_principal(), sub_id, request.immediately, self._billing()
        )
        return pb.CancelSubscriptionResponse(subscription=subscription_pb(sub, name, self._grace))

    async def ResumeSubscription(
        self, request: pb.ResumeSubscriptionRequest, context: Context
    ) -> pb.ResumeSubscriptionResponse:
        sub_id = _validate.required_id("id", request.id)
        sub, name = await _queries.resume(
            self._res.db, current_principal(), sub_id, self._billing()
        )
        return pb.ResumeSubscriptionResponse(subscription=subscription_pb(sub, name, self._grace))

    async def ListInvoices(
        self, request: pb.ListInvoicesRequest, context: Context
    ) -> pb.ListInvoicesResponse:
        sub_id, page = _validate.list_invoices(request, self._res.page_tokens)
        rows, last = await _queries.list_invoices(self._res.db, current_principal(), sub_id, page)
        scope = str(sub_id) if sub_id else ""
        return pb.ListInvoicesResponse(
            invoices=[invoice_pb(s, name) for s, name in rows],
            next_page_token=self._res.page_tokens.keyset_token("invoices", scope, last)
            if last
            else "",
        )

    async def CreateWebhookEndpoint(
        self, request: pb.CreateWebhookEndpointRequest, context: Context
    ) -> pb.CreateWebhookEndpointResponse:
        allow = self._res.settings.webhooks_allow_private == "on"
        given = _validate.create_webhook_endpoint(request, allow)
        endpoint, secret = await _webhooks.create_endpoint(
            self._res.db, current_principal(), given, allow, self._res.clock()
        )
        return pb.CreateWebhookEndpointResponse(endpoint=endpoint_pb(endpoint), secret=secret)

    async def ListWebhookEndpoints(
        self, request: pb.ListWebhookEndpointsRequest, context: Context
    ) -> pb.ListWebhookEndpointsResponse:
        sub_id = _validate.required_id("subscription_id", request.subscription_id)
        found = await _webhooks.list_endpoints(self._res.db, current_principal(), sub_id)
        return pb.ListWebhookEndpointsResponse(endpoints=[endpoint_pb(e) for e in found])

    async def DeleteWebhookEndpoint(
        self, request: pb.DeleteWebhookEndpointRequest, context: Context
    ) -> pb.DeleteWebhookEndpointResponse:
        endpoint_id = _validate.required_id("id", request.id)
        await _webhooks.delete_endpoint(self._res.db, current_principal(), endpoint_id)
        return pb.DeleteWebhookEndpointResponse()

    async def SendTestWebhook(
        self, request: pb.SendTestWebhookRequest, context: Context
    ) -> pb.SendTestWebhookResponse:
        endpoint_id = _validate.required_id("id", request.id)
        delivery = await _webhooks.send_test(
            self._res.db, current_principal(), endpoint_id, self._res.clock()
        )
        return pb.SendTestWebhookResponse(delivery=delivery_pb(delivery, [], None))

    async def ListWebhookDeliveries(
        self, request: pb.ListWebhookDeliveriesRequest, context: Context
    ) -> pb.ListWebhookDeliveriesResponse:
        sub_id, endpoint_id, page = _validate.list_webhook_deliveries(
            request, self._res.page_tokens
        )
        rows, last = await _webhooks.list_deliveries(
            self._res.db, current_principal(), sub_id, endpoint_id, page
        )
        scope = f"{sub_id}:{endpoint_id or ''}"
        return pb.ListWebhookDeliveriesResponse(
            deliveries=[delivery_pb(*row) for row in rows],
            next_page_token=self._res.page_tokens.keyset_token("webhook-deliveries", scope, last)
            if last
            else "",
        )


def add_to_server(server: aio.Server, resources: Resources) -> None:
    pb_grpc.add_SubscriptionServiceServicer_to_server(SubscriptionServicer(resources), server)
