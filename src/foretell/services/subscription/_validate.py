"""Input rules for SubscriptionService, every violation reported at once."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from foretell.currencies import MINOR_UNITS
from foretell.errors import Violations
from foretell.paging import Page, PageTokens
from foretell.services.registry import model_name
from foretell.subscription.v1 import subscription_service_pb2 as pb
from foretell.text import check_text
from foretell.webhooks import EndpointRefused, Target, parse_url

MAX_TRIAL_DAYS = 30
# Far above any monthly price, far below int64: sums of many invoices cannot overflow.
MAX_PRICE_MINOR = 10**12


@dataclass(frozen=True)
class PlanInput:
    model: str
    price_minor: int
    currency: str
    trial_days: int


def _id(v: Violations, field: str, text: str, *, required: bool) -> uuid.UUID | None:
    if not text:
        if required:
            v.add(field, "required")
        return None
    try:
        return uuid.UUID(text)
    except ValueError:
        v.add(field, "not an id (a UUID)")
        return None


def update_plan(request: pb.UpdatePlanRequest) -> PlanInput:
    v = Violations()
    name = model_name(v, "model", request.model)
    plan = request.plan
    if not request.HasField("plan"):
        v.add("plan", "required")
    if not 0 <= plan.price_minor <= MAX_PRICE_MINOR:
        v.add("plan.price_minor", f"0 to {MAX_PRICE_MINOR} minor units (4900 is 49.00 USD)")
    if plan.currency not in MINOR_UNITS:
        v.add("plan.currency", "an ISO 4217 code the platform bills in, e.g. USD, EUR, GBP")
    if not 0 <= plan.trial_days <= MAX_TRIAL_DAYS:
        v.add("plan.trial_days", f"0 to {MAX_TRIAL_DAYS}")
    v.raise_if_any()
    return PlanInput(name, plan.price_minor, plan.currency, plan.trial_days)


def list_subscriptions(
    request: pb.ListSubscriptionsRequest, tokens: PageTokens
) -> tuple[str, Page]:
    v = Violations()
    name = model_name(v, "model", request.model) if request.model else ""
    page = tokens.keyset_page(v, "subscriptions", name, request.page_size, request.page_token)
    v.raise_if_any()
    return name, page


def required_id(field: str, text: str) -> uuid.UUID:
    """The one id a request names (`field`: a subscription's, an endpoint's)."""
    v = Violations()
    found = _id(v, field, text, required=True)
    v.raise_if_any()
    assert found is not None
    return found


def list_invoices(
    request: pb.ListInvoicesRequest, tokens: PageTokens
) -> tuple[uuid.UUID | None, Page]:
    v = Violations()
    found = _id(v, "subscription_id", request.subscription_id, required=False)
    scope = str(found) if found else ""
    page = tokens.keyset_page(v, "invoices", scope, request.page_size, request.page_token)
    v.raise_if_any()
    return found, page


@dataclass(frozen=True)
class EndpointInput:
    subscription_id: uuid.UUID
    target: Target
    description: str


DESCRIPTION_CHARS = 200


def create_webhook_endpoint(
    request: pb.CreateWebhookEndpointRequest, allow_private: bool
) -> EndpointInput:
    """The syntax of the URL only; where it resolves to is checked after (foretell.webhooks)."""
    v = Violations()
    sub_id = _id(v, "subscription_id", request.subscription_id, required=True)
    target = None
    if not request.url:
        v.add("url", "required")
    else:
        try:
            target = parse_url(request.url, allow_private=allow_private)
        except EndpointRefused as refused:
            v.add("url", str(refused))
    description = request.description.strip()
    if description:
        check_text(v, "description", description, DESCRIPTION_CHARS)
    v.raise_if_any()
    assert sub_id is not None
    assert target is not None
    return EndpointInput(sub_id, target, description)


def list_webhook_deliveries(
    request: pb.ListWebhookDeliveriesRequest, tokens: PageTokens
) -> tuple[uuid.UUID, uuid.UUID | None, Page]:
    v = Violations()
    sub_id = _id(v, "subscription_id", request.subscription_id, required=True)
    endpoint = _id(v, "endpoint_id", request.endpoint_id, required=False)
    scope = f"{sub_id}:{endpoint or ''}"
    page = tokens.keyset_page(v, "webhook-deliveries", scope, request.page_size, request.page_token)
    v.raise_if_any()
    assert sub_id is not None
    return sub_id, endpoint, page
