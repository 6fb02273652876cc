"""Prorated credits: a subscription that ends before its paid period does (cancelled now by its
subscriber, or its model made private) is credited the unused part of that period, rounded
down to a whole minor unit, once."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
from google.protobuf.field_mask_pb2 import FieldMask
from grpc import aio
from sqlalchemy import select

from foretell.account.v1 import account_service_pb2 as account_pb
from foretell.billing.admin import pay_invoice
from foretell.billing.prorate import describe, unused_minor
from foretell.billing.settle import credit_unused_period, locked_subscription
from foretell.db.models import CreditNote
from foretell.registry.v1 import registry_service_pb2 as reg_pb
from foretell.registry.v1 import registry_service_pb2_grpc as reg_grpc
from foretell.runtime import Resources
from foretell.subscription.v1 import subscription_service_pb2 as pb
from foretell.subscription.v1 import subscription_service_pb2_grpc as pb_grpc
from tests._billing import sold_model
from tests._records import Made
from tests.conftest import MovableClock, SignedIn, SignUp

NOV = datetime(2026, 11, 1, tzinfo=UTC)
DEC = datetime(2026, 12, 1, tzinfo=UTC)


@pytest.mark.parametrize(
    ("amount", "ended_at", "expected"),
    [
        # Half of a 30-day month.
        (4900, datetime(2026, 11, 16, tzinfo=UTC), 2450),
        # 29 days and 1 second unused of 30: 4900 x 2505601 / 2592000 = 4736.6..., down.
        (4900, datetime(2026, 11, 1, 23, 59, 59, tzinfo=UTC), 4736),
        # One second unused: less than a cent, so nothing.
        (4900, DEC - timedelta(seconds=1), 0),
        # Ended before the period began: all of it; after it ended: none.
        (4900, NOV - timedelta(days=3), 4900),
        (4900, DEC + timedelta(days=3), 0),
        # Currencies without minor units round to whole yen: 1000 x 20/30 = 666.6... -> 666.
        (1000, datetime(2026, 11, 11, tzinfo=UTC), 666),
        (0, datetime(2026, 11, 11, tzinfo=UTC), 0),
    ],
)
def test_the_unused_share_is_by_time_and_rounded_down(
    amount: int, ended_at: datetime, expected: int
) -> None:
    assert unused_minor(amount, NOV, DEC, ended_at) == expected


def test_the_line_names_the_span_it_credits() -> None:
    line = describe(NOV, DEC, datetime(2026, 11, 16, 12, tzinfo=UTC))
    assert line == "unused 14.50 of 30 days, 2026-11-16 12:00 to 2026-12-01 00:00 UTC"


async def _paid_subscription(
    channel: aio.Channel, sign_up: SignUp, resources: Resources, clock: MovableClock
) -> tuple[Made, SignedIn, pb.Subscription, pb.Invoice]:
    """An ACTIVE subscription (no trial) whose first invoice, 49.00 USD, is paid."""
    model = await sold_model(channel, sign_up, resources, trial_days=0)
    reader = await sign_up(account_pb.ROLE_SUBSCRIBER)
    stub = pb_grpc.SubscriptionServiceStub(channel)
    started = await stub.Subscribe(pb.SubscribeRequest(model=model.name), metadata=reader.metadata)
    (invoice,) = await _invoices(stub, reader, started.subscription.id)
    await pay_invoice(resources.settings, invoice.id, "wire", clock=clock)
    return model, reader, started.subscription, invoice


async def _invoices(
    stub: pb_grpc.SubscriptionServiceAsyncStub, reader: SignedIn, sub_id: str
) -> list[pb.Invoice]:
    listed = await stub.ListInvoices(
        pb.ListInvoicesRequest(subscription_id=sub_id), metadata=reader.metadata
    )
    return list(listed.invoices)


async def _credit_notes(resources: Resources, invoice_id: str) -> list[CreditNote]:
    async with resources.db.session() as session:
        found = await session.scalars(
            select(CreditNote).where(CreditNote.invoice_id == uuid.UUID(invoice_id))
        )
        return list(found)


def _expected(invoice: pb.Invoice, note: CreditNote) -> int:
    assert note.unused_from is not None
    start = invoice.period_start_time.ToDatetime(UTC)
    end = invoice.period_end_time.ToDatetime(UTC)
    return unused_minor(invoice.amount_minor, start, end, note.unused_from)


async def test_cancelling_now_credits_the_unused_part_of_a_paid_period_once(
    channel: aio.Channel, sign_up: SignUp, resources: Resources, clock: MovableClock
) -> None:
    _, reader, sub, invoice = await _paid_subscription(channel, sign_up, resources, clock)
    clock.advance(timedelta(days=10))
    stub = pb_grpc.SubscriptionServiceStub(channel)
    await stub.CancelSubscription(
        pb.CancelSubscriptionRequest(id=sub.id, immediately=True), metadata=reader.metadata
    )
    (note,) = await _credit_notes(resources, invoice.id)
    assert note.amount_minor == _expected(invoice, note)
    # About two thirds of a month of 28 to 31 days.
    days = (invoice.period_end_time.ToDatetime(UTC) - note.unused_from).days  # type: ignore[operator]
    assert days in range(17, 22)
    assert note.reason.startswith("canceled by the subscriber: unused ")
    (after,) = await _invoices(stub, reader, sub.id)
    assert after.state == pb.INVOICE_STATE_PAID
    assert after.credited_minor == note.amount_minor
    # The subscriber sees the credit note and its line.
    (shown,) = after.credit_notes
    assert (shown.id, shown.amount_minor, shown.reason) == (
        str(note.id),
        note.amount_minor,
        note.reason,
    )
    # A second credit for the same period is refused by the database, whoever asks.
    async with resources.db.session.begin() as session:
        locked = await locked_subscription(session, uuid.UUID(sub.id))
        clock.advance(timedelta(days=1))
        assert await credit_unused_period(session, locked, clock(), "again") is None
    assert len(await _credit_notes(resources, invoice.id)) == 1


async def test_cancelling_at_period_end_or_during_a_trial_credits_nothing(
    channel: aio.Channel, sign_up: SignUp, resources: Resources, clock: MovableClock
) -> None:
    _, reader, sub, invoice = await _paid_subscription(channel, sign_up, resources, clock)
    stub = pb_grpc.SubscriptionServiceStub(channel)
    await stub.CancelSubscription(
        pb.CancelSubscriptionRequest(id=sub.id, immediately=False), metadata=reader.metadata
    )
    assert await _credit_notes(resources, invoice.id) == []

    model = await sold_model(channel, sign_up, resources, trial_days=7)
    trialing = await stub.Subscribe(pb.SubscribeRequest(model=model.name), metadata=reader.metadata)
    await stub.CancelSubscription(
        pb.CancelSubscriptionRequest(id=trialing.subscription.id, immediately=True),
        metadata=reader.metadata,
    )
    assert await _invoices(stub, reader, trialing.subscription.id) == []


async def test_an_unpaid_period_cancelled_now_is_owed_only_for_what_was_used(
    channel: aio.Channel, sign_up: SignUp, resources: Resources, clock: MovableClock
) -> None:
    model = await sold_model(channel, sign_up, resources, trial_days=1)
    reader = await sign_up(account_pb.ROLE_SUBSCRIBER)
    stub = pb_grpc.SubscriptionServiceStub(channel)
    started = await stub.Subscribe(pb.SubscribeRequest(model=model.name), metadata=reader.metadata)
    # The trial ends; the first month is invoiced and left unpaid for a few days.
    clock.advance(timedelta(days=4))
    await stub.CancelSubscription(
        pb.CancelSubscriptionRequest(id=started.subscription.id, immediately=True),
        metadata=reader.metadata,
    )
    (invoice,) = await _invoices(stub, reader, started.subscription.id)
    (note,) = await _credit_notes(resources, invoice.id)
    assert note.amount_minor == _expected(invoice, note)
    assert invoice.state == pb.INVOICE_STATE_OPEN
    assert invoice.amount_due_minor == invoice.amount_minor - note.amount_minor
    assert 0 < invoice.amount_due_minor < invoice.amount_minor // 5


async def test_a_model_made_private_credits_its_paid_subscribers_pro_rata(
    channel: aio.Channel, sign_up: SignUp, resources: Resources, clock: MovableClock
) -> None:
    model, reader, _sub, invoice = await _paid_subscription(channel, sign_up, resources, clock)
    clock.advance(timedelta(days=3))
    await reg_grpc.RegistryServiceStub(channel).UpdateModel(
        reg_pb.UpdateModelRequest(
            model=reg_pb.Model(name=model.name, visibility=reg_pb.VISIBILITY_PRIVATE),
            update_mask=FieldMask(paths=["visibility"]),
        ),
        metadata=model.owner.metadata,
    )
    (note,) = await _credit_notes(resources, invoice.id)
    assert note.amount_minor == _expected(invoice, note)
    assert note.reason.startswith("the provider made the model private: unused ")
    stub = pb_grpc.SubscriptionServiceStub(channel)
    (ended,) = (
        await stub.ListSubscriptions(pb.ListSubscriptionsRequest(), metadata=reader.metadata)
    ).subscriptions
    assert ended.state == pb.SUBSCRIPTION_STATE_CANCELED
