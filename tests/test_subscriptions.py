"""Plans, subscriptions, invoices and payments: the state machine driven by a moving clock, the
billing run, the database's refusal to change issued invoices, and who sees what."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import itertools
import subprocess
import uuid
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import asyncpg
import grpc
import pytest
from sqlalchemy import func, select
from sqlalchemy.engine import make_url

from foretell.account.v1 import account_service_pb2 as account_pb
from foretell.account.v1 import account_service_pb2_grpc as account_grpc
from foretell.auth.policy import Role
from foretell.billing._months import add_months
from foretell.billing.machine import TRANSITIONS, Event, State, next_state
from foretell.billing.payments import ManualProcessor, processor_for
from foretell.billing.settle import record_payment, run_billing
from foretell.db.models import Invoice, Subscription, SubscriptionEvent
from foretell.errors import FailedPrecondition
from foretell.registry.v1 import registry_service_pb2_grpc as reg_grpc
from foretell.runtime import Resources
from foretell.services.account._queries import create_user
from foretell.subscription.v1 import subscription_service_pb2 as pb
from foretell.subscription.v1 import subscription_service_pb2_grpc as pb_grpc
from tests._billing import set_plan, sold_model
from tests._errors import field_violations
from tests._records import Made, make_model
from tests.conftest import (
    FORETELL,
    PASSWORD,
    MovableClock,
    SignedIn,
    SignUp,
    foretell_env,
    status_code,
    unique_email,
)

if TYPE_CHECKING:
    from grpc import aio

DAY = timedelta(days=1)


@pytest.fixture(scope="module")
def subs(channel: aio.Channel) -> pb_grpc.SubscriptionServiceAsyncStub:
    return pb_grpc.SubscriptionServiceStub(channel)


@pytest.fixture(scope="module")
def registry(channel: aio.Channel) -> reg_grpc.RegistryServiceAsyncStub:
    return reg_grpc.RegistryServiceStub(channel)


# --- the machine and the calendar -------------------------------------------------------------


def test_months_are_calendar_months_from_the_anchor_clamped_to_month_ends() -> None:
    jan31 = datetime(2024, 1, 31, 9, 30, tzinfo=UTC)
    assert [add_months(jan31, k).date().isoformat() for k in range(4)] == [
        "2024-01-31",
        "2024-02-29",
        "2024-03-31",
        "2024-04-30",
    ]
    assert add_months(jan31, 12).date().isoformat() == "2025-01-31"
    assert add_months(datetime(2023, 11, 30, tzinfo=UTC), 3).date().isoformat() == "2024-02-29"


@pytest.mark.parametrize(
    ("state", "event", "expected"),
    [
        (None, Event.SUBSCRIBE_TRIAL, State.TRIALING),
        (None, Event.SUBSCRIBE, State.INCOMPLETE),
        (State.TRIALING, Event.TRIAL_ENDED, State.ACTIVE),
        (State.INCOMPLETE, Event.INVOICE_PAID, State.ACTIVE),
        (State.INCOMPLETE, Event.INVOICE_OVERDUE, State.EXPIRED),
        (State.ACTIVE, Event.RENEWED, State.ACTIVE),
        (State.ACTIVE, Event.INVOICE_OVERDUE, State.PAST_DUE),
        (State.PAST_DUE, Event.INVOICE_PAID, State.ACTIVE),
        (State.PAST_DUE, Event.GRACE_ENDED, State.EXPIRED),
        (State.ACTIVE, Event.CANCEL, State.ACTIVE),
        (State.ACTIVE, Event.ENDED_AT_PERIOD_END, State.CANCELED),
        (State.TRIALING, Event.CANCEL_NOW, State.CANCELED),
        (State.INCOMPLETE, Event.CANCEL, State.CANCELED),
        (State.ACTIVE, Event.RESUME, State.ACTIVE),
        # Ended is ended: nothing brings a subscription back.
        (State.CANCELED, Event.RESUME, None),
        (State.EXPIRED, Event.INVOICE_PAID, None),
        (State.TRIALING, Event.RENEWED, None),
        (State.INCOMPLETE, Event.RESUME, None),
    ],
)
def test_the_transition_table(state: State | None, event: Event, expected: State | None) -> None:
    if expected is None:
        with pytest.raises(FailedPrecondition):
            next_state(state, event)
    else:
        assert next_state(state, event) is expected


def test_ended_states_have_no_way_out() -> None:
    assert not [key for key in TRANSITIONS if key[0] in (State.CANCELED, State.EXPIRED)]


# --- scenarios with a moving clock ------------------------------------------------------------


@dataclasses.dataclass
class World:
    resources: Resources
    clock: MovableClock
    subs: pb_grpc.SubscriptionServiceAsyncStub
    model: Made
    reader: SignedIn
    channel: aio.Channel
    sub_id: str = ""

    async def subscribe(self) -> pb.SubscribeResponse:
        response = await self.subs.Subscribe(
            pb.SubscribeRequest(model=self.model.name), metadata=self.reader.metadata
        )
        self.sub_id = response.subscription.id
        return response

    async def bill(self) -> int:
        res = self.resources
        return await run_billing(res.db, res.settings, self.clock(), processor_for(res.settings))

    async def state(self) -> str:
        """The stored state, as the billing run left it (no settling on the way)."""
        async with self.resources.db.session() as session:
            return str(
                await session.scalar(
                    select(func.min(SubscriptionEvent.to_state))
                    .where(SubscriptionEvent.subscription_id == uuid.UUID(self.sub_id))
                    .where(
                        SubscriptionEvent.id
                        == select(func.max(SubscriptionEvent.id))
                        .where(SubscriptionEvent.subscription_id == uuid.UUID(self.sub_id))
                        .scalar_subquery()
                    )
                )
            )

    async def invoices(self) -> list[pb.Invoice]:
        listed = await self.subs.ListInvoices(
            pb.ListInvoicesRequest(subscription_id=self.sub_id), metadata=self.reader.metadata
        )
        return list(reversed(listed.invoices))  # oldest first

    async def pay_open(self) -> None:
        (open_invoice,) = [i for i in await self.invoices() if i.state == pb.INVOICE_STATE_OPEN]
        res = self.resources
        async with res.db.session.begin() as session:
            await record_payment(
                session,
                uuid.UUID(open_invoice.id),
                processor="manual",
                reference="test",
                now=self.clock(),
                settings=res.settings,
                charger=ManualProcessor(),
            )

    async def history(self) -> list[tuple[str, str | None, str]]:
        async with self.resources.db.session() as session:
            rows = await session.execute(
                select(
                    SubscriptionEvent.event,
                    SubscriptionEvent.from_state,
                    SubscriptionEvent.to_state,
                )
                .where(SubscriptionEvent.subscription_id == uuid.UUID(self.sub_id))
                .order_by(SubscriptionEvent.id)
            )
            return [(r[0], r[1], r[2]) for r in rows.all()]


Step = Callable[[World], Awaitable[object]]


def advance(days: float) -> Step:
    async def step(world: World) -> None:
        world.clock.advance(days * DAY)

    return step


def cancel(immediately: bool = False) -> Step:
    async def step(world: World) -> None:
        await world.subs.CancelSubscription(
            pb.CancelSubscriptionRequest(id=world.sub_id, immediately=immediately),
            metadata=world.reader.metadata,
        )

    return step


async def resume(world: World) -> None:
    await world.subs.ResumeSubscription(
        pb.ResumeSubscriptionRequest(id=world.sub_id), metadata=world.reader.metadata
    )


async def bill(world: World) -> int:
    return await world.bill()


async def pay(world: World) -> None:
    await world.pay_open()


def price(minor: int) -> Step:
    async def step(world: World) -> None:
        await set_plan(
            world.channel,
            world.model.owner,
            world.model.name,
            price_minor=minor,
        )

    return step


# Each scenario: plan trial days, then (step, the stored state after it, invoice amounts so far).
# Due after 7 days, grace 7 days (the defaults).
SCENARIOS: dict[str, tuple[int, list[tuple[Step, str, list[int]]]]] = {
    "trial, first invoice at trial end, paid, renewed, unpaid, past due, expired": (
        14,
        [
            (advance(13), "trialing", []),
            (bill, "trialing", []),
            (advance(1.5), "trialing", []),
            (bill, "active", [4900]),
            (pay, "active", [4900]),
            (advance(31), "active", [4900]),
            (bill, "active", [4900, 4900]),
            (advance(8), "active", [4900, 4900]),
            (bill, "past_due", [4900, 4900]),
            (advance(7), "past_due", [4900, 4900]),
            (bill, "expired", [4900, 4900]),
        ],
    ),
    "no trial: incomplete until paid": (
        0,
        [
            (advance(1), "incomplete", [4900]),
            (pay, "active", [4900]),
            (advance(30), "active", [4900]),
            (bill, "active", [4900, 4900]),
        ],
    ),
    "no trial, never paid: expired at the due date": (
        0,
        [
            (advance(6), "incomplete", [4900]),
            (advance(2), "incomplete", [4900]),
            (bill, "expired", [4900]),
        ],
    ),
    "past due, paid within grace: active again": (
        0,
        [
            (pay, "active", [4900]),
            (advance(32), "active", [4900]),
            (bill, "active", [4900, 4900]),
            (advance(8), "active", [4900, 4900]),
            (bill, "past_due", [4900, 4900]),
            (pay, "active", [4900, 4900]),
        ],
    ),
    "cancel at period end, resume, cancel again: ends with the trial, no invoice": (
        14,
        [
            (cancel(), "trialing", []),
            (resume, "trialing", []),
            (cancel(), "trialing", []),
            (advance(13), "trialing", []),
            (bill, "trialing", []),
            (advance(2), "trialing", []),
            (bill, "canceled", []),
        ],
    ),
    "cancel now": (0, [(pay, "active", [4900]), (cancel(immediately=True), "canceled", [4900])]),
    "price change applies from the next period": (
        0,
        [
            (pay, "active", [4900]),
            (price(5900), "active", [4900]),
            (advance(31), "active", [4900]),
            (bill, "active", [4900, 5900]),
        ],
    ),
}


@pytest.mark.parametrize("name", list(SCENARIOS))
async def test_subscription_lifecycle(
    name: str,
    channel: aio.Channel,
    subs: pb_grpc.SubscriptionServiceAsyncStub,
    sign_up: SignUp,
    resources: Resources,
    clock: MovableClock,
) -> None:
    trial_days, steps = SCENARIOS[name]
    model = await sold_model(channel, sign_up, resources, trial_days=trial_days)
    world = World(resources, clock, subs, model, await sign_up(account_pb.ROLE_SUBSCRIBER), channel)
    started = await world.subscribe()
    assert started.subscription.state == (
        pb.SUBSCRIPTION_STATE_TRIALING if trial_days else pb.SUBSCRIPTION_STATE_INCOMPLETE
    )
    for i, (step, state, amounts) in enumerate(steps):
        await step(world)
        assert await world.state() == state, f"step {i}"
        assert [inv.amount_minor for inv in await world.invoices()] == amounts, f"step {i}"
    # Every transition is in the audit log, each from the state the previous one left.
    history = await world.history()
    assert history[0][1] is None
    assert all(prev[2] == nxt[1] for prev, nxt in itertools.pairwise(history))
    assert history[-1][2] == steps[-1][1]


async def test_resubscribing_never_gives_a_second_trial(
    channel: aio.Channel,
    subs: pb_grpc.SubscriptionServiceAsyncStub,
    sign_up: SignUp,
    resources: Resources,
) -> None:
    model = await sold_model(channel, sign_up, resources, trial_days=7)
    reader = await sign_up(account_pb.ROLE_SUBSCRIBER)
    md = reader.metadata
    first = await subs.Subscribe(pb.SubscribeRequest(model=model.name), metadata=md)
    assert first.subscription.state == pb.SUBSCRIPTION_STATE_TRIALING
    # One live subscription per subscriber and model.
    with pytest.raises(grpc.RpcError) as caught:
        await subs.Subscribe(pb.SubscribeRequest(model=model.name), metadata=md)
    assert status_code(caught.value) == grpc.StatusCode.FAILED_PRECONDITION
    await subs.CancelSubscription(
        pb.CancelSubscriptionRequest(id=first.subscription.id, immediately=True), metadata=md
    )
    again = await subs.Subscribe(pb.SubscribeRequest(model=model.name), metadata=md)
    assert again.subscription.state == pb.SUBSCRIPTION_STATE_INCOMPLETE
    assert again.invoice.amount_minor == 4900 and again.invoice.state == pb.INVOICE_STATE_OPEN
    # Canceling before paying credits the first invoice in full: nothing is owed.
    canceled = await subs.CancelSubscription(
        pb.CancelSubscriptionRequest(id=again.subscription.id), metadata=md
    )
    assert canceled.subscription.model_title == "Test model"
    (voided,) = (
        await subs.ListInvoices(
            pb.ListInvoicesRequest(subscription_id=again.subscription.id), metadata=md
        )
    ).invoices
    assert voided.state == pb.INVOICE_STATE_VOID
    assert voided.amount_minor == 4900 and voided.credited_minor == 4900
    assert voided.amount_due_minor == 0
    listed = await subs.ListSubscriptions(
        pb.ListSubscriptionsRequest(model=model.name), metadata=md
    )
    assert [s.state for s in listed.subscriptions] == [
        pb.SUBSCRIPTION_STATE_CANCELED,
        pb.SUBSCRIPTION_STATE_CANCELED,
    ]
    # Every answer names the model by its title too, for people to read.
    titles = {s.model_title for s in listed.subscriptions}
    titles |= {first.subscription.model_title, again.invoice.model_title, voided.model_title}
    assert titles == {"Test model"}


async def test_the_billing_run_is_idempotent(
    channel: aio.Channel,
    subs: pb_grpc.SubscriptionServiceAsyncStub,
    sign_up: SignUp,
    resources: Resources,
    clock: MovableClock,
) -> None:
    model = await sold_model(channel, sign_up, resources, trial_days=3)
    world = World(resources, clock, subs, model, await sign_up(account_pb.ROLE_SUBSCRIBER), channel)
    await world.subscribe()
    clock.advance(4 * DAY)
    assert await world.bill() >= 1
    events = await world.history()
    assert await world.bill() == 0
    assert await world.history() == events
    # Even two runs at once issue the period's invoice once.
    await world.pay_open()
    clock.advance(31 * DAY)
    await asyncio.gather(world.bill(), world.bill())
    async with resources.db.session() as session:
        count = await session.scalar(
            select(func.count())
            .select_from(Invoice)
            .where(Invoice.subscription_id == uuid.UUID(world.sub_id))
        )
    assert count == 2


# --- invoices: immutable, private -------------------------------------------------------------


async def _sql(resources: Resources, statement: str, *args: object) -> None:
    url = make_url(str(resources.settings.database_url)).set(drivername="postgresql")
    connection = await asyncpg.connect(url.render_as_string(hide_password=False))
    try:
        await connection.execute(statement, *args)
    finally:
        await connection.close()


async def test_issued_invoices_cannot_be_changed_in_sql(
    channel: aio.Channel,
    subs: pb_grpc.SubscriptionServiceAsyncStub,
    sign_up: SignUp,
    resources: Resources,
    clock: MovableClock,
) -> None:
    model = await sold_model(channel, sign_up, resources, trial_days=0)
    world = World(resources, clock, subs, model, await sign_up(account_pb.ROLE_SUBSCRIBER), channel)
    invoice = (await world.subscribe()).invoice
    await world.pay_open()
    for statement in (
        "UPDATE invoices SET amount_minor = 1 WHERE id = $1",
        "DELETE FROM invoices WHERE id = $1",
        "UPDATE payments SET amount_minor = 0 WHERE invoice_id = $1",
        "TRUNCATE invoices CASCADE",
    ):
        args = (uuid.UUID(invoice.id),) if "$1" in statement else ()
        with pytest.raises(asyncpg.PostgresError) as caught:
            await _sql(resources, statement, *args)
        assert caught.value.sqlstate == "FT001", statement
    (kept,) = await world.invoices()
    assert kept.amount_minor == 4900 and kept.state == pb.INVOICE_STATE_PAID


async def test_nobody_reads_or_changes_anothers_subscriptions_and_invoices(
    channel: aio.Channel,
    subs: pb_grpc.SubscriptionServiceAsyncStub,
    sign_up: SignUp,
    resources: Resources,
) -> None:
    model = await sold_model(channel, sign_up, resources, trial_days=0)
    alice = await sign_up(account_pb.ROLE_SUBSCRIBER)
    bob = await sign_up(account_pb.ROLE_SUBSCRIBER)
    mine = await subs.Subscribe(pb.SubscribeRequest(model=model.name), metadata=alice.metadata)
    sub_id = mine.subscription.id
    assert [
        i.id
        for i in (
            await subs.ListInvoices(pb.ListInvoicesRequest(), metadata=alice.metadata)
        ).invoices
    ] == [mine.invoice.id]
    assert not (await subs.ListInvoices(pb.ListInvoicesRequest(), metadata=bob.metadata)).invoices
    assert not (
        await subs.ListSubscriptions(pb.ListSubscriptionsRequest(), metadata=bob.metadata)
    ).subscriptions
    got = await subs.GetSubscription(pb.GetSubscriptionRequest(id=sub_id), metadata=alice.metadata)
    assert got.subscription == mine.subscription
    for call in (
        subs.GetSubscription(pb.GetSubscriptionRequest(id=sub_id), metadata=bob.metadata),
        subs.ListInvoices(pb.ListInvoicesRequest(subscription_id=sub_id), metadata=bob.metadata),
        subs.CancelSubscription(pb.CancelSubscriptionRequest(id=sub_id), metadata=bob.metadata),
        subs.ResumeSubscription(pb.ResumeSubscriptionRequest(id=sub_id), metadata=bob.metadata),
    ):
        with pytest.raises(grpc.RpcError) as caught:
            await call
        assert status_code(caught.value) == grpc.StatusCode.NOT_FOUND


# --- who may subscribe, and bad input ---------------------------------------------------------


async def test_plans_and_subscribing_rules(
    channel: aio.Channel,
    subs: pb_grpc.SubscriptionServiceAsyncStub,
    registry: reg_grpc.RegistryServiceAsyncStub,
    sign_up: SignUp,
    resources: Resources,
) -> None:
    public = await make_model(registry, sign_up, resources, public=True)
    private = await make_model(registry, sign_up, resources, public=False)
    reader = await sign_up(account_pb.ROLE_SUBSCRIBER)
    md = reader.metadata

    async def code(call: Awaitable[object]) -> grpc.StatusCode:
        with pytest.raises(grpc.RpcError) as caught:
            await call
        return status_code(caught.value)

    # No plan yet: nothing to read, nothing to buy.
    assert await code(subs.GetPlan(pb.GetPlanRequest(model=public.name), metadata=md)) == (
        grpc.StatusCode.NOT_FOUND
    )
    assert await code(subs.Subscribe(pb.SubscribeRequest(model=public.name), metadata=md)) == (
        grpc.StatusCode.FAILED_PRECONDITION
    )
    plan = await set_plan(channel, public.owner, public.name, price_minor=1250, currency="EUR")
    assert (plan.model, plan.price_minor, plan.currency, plan.trial_days) == (
        public.name,
        1250,
        "EUR",
        14,
    )
    got = await subs.GetPlan(pb.GetPlanRequest(model=public.name), metadata=md)
    assert got.plan == plan
    # Only the owner sets it; the owner does not subscribe to their own model.
    other_provider = await sign_up()
    assert (
        await code(
            subs.UpdatePlan(
                pb.UpdatePlanRequest(model=public.name, plan=pb.Plan(currency="USD")),
                metadata=other_provider.metadata,
            )
        )
        == grpc.StatusCode.PERMISSION_DENIED
    )
    assert (
        await code(
            subs.Subscribe(pb.SubscribeRequest(model=public.name), metadata=public.owner.metadata)
        )
        == grpc.StatusCode.PERMISSION_DENIED
    )
    # Another provider may subscribe; a private model does not exist for others.
    provider_sub = await subs.Subscribe(
        pb.SubscribeRequest(model=public.name), metadata=other_provider.metadata
    )
    assert provider_sub.subscription.state == pb.SUBSCRIPTION_STATE_TRIALING
    await set_plan(channel, private.owner, private.name)
    assert await code(subs.Subscribe(pb.SubscribeRequest(model=private.name), metadata=md)) == (
        grpc.StatusCode.NOT_FOUND
    )


async def test_bad_input_names_the_fields(
    channel: aio.Channel, subs: pb_grpc.SubscriptionServiceAsyncStub, sign_up: SignUp
) -> None:
    owner = await sign_up()
    md = owner.metadata
    cases: list[tuple[Awaitable[object], dict[str, str]]] = [
        (
            subs.UpdatePlan(
                pb.UpdatePlanRequest(
                    model="some-model",
                    plan=pb.Plan(price_minor=-1, currency="XYZ", trial_days=31),
                ),
                metadata=md,
            ),
            {"plan.price_minor": "", "plan.currency": "", "plan.trial_days": ""},
        ),
        (
            subs.UpdatePlan(pb.UpdatePlanRequest(model="Bad Name"), metadata=md),
            {"model": "", "plan": "", "plan.currency": ""},
        ),
        (subs.Subscribe(pb.SubscribeRequest(model=""), metadata=md), {"model": ""}),
        (subs.GetPlan(pb.GetPlanRequest(model="x"), metadata=md), {"model": ""}),
        (subs.GetSubscription(pb.GetSubscriptionRequest(id="nope"), metadata=md), {"id": ""}),
        (subs.CancelSubscription(pb.CancelSubscriptionRequest(id="nope"), metadata=md), {"id": ""}),
        (subs.ResumeSubscription(pb.ResumeSubscriptionRequest(id=""), metadata=md), {"id": ""}),
        (
            subs.ListInvoices(pb.ListInvoicesRequest(subscription_id="42"), metadata=md),
            {"subscription_id": ""},
        ),
    ]
    for call, fields in cases:
        with pytest.raises(grpc.RpcError) as caught:
            await call
        assert status_code(caught.value) == grpc.StatusCode.INVALID_ARGUMENT
        assert set(field_violations(caught.value)) == set(fields)


# --- the admin commands -----------------------------------------------------------------------


def _admin(resources: Resources, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [FORETELL, "admin", "invoices", *args],
        env=foretell_env(resources.settings),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def test_admin_marks_an_invoice_paid(
    channel: aio.Channel,
    subs: pb_grpc.SubscriptionServiceAsyncStub,
    sign_up: SignUp,
    resources: Resources,
) -> None:
    import json

    model = await sold_model(channel, sign_up, resources, trial_days=0)
    reader = await sign_up(account_pb.ROLE_SUBSCRIBER)
    started = await subs.Subscribe(pb.SubscribeRequest(model=model.name), metadata=reader.metadata)
    listed = await asyncio.to_thread(
        _admin, resources, "list", "--open", "--json", "--limit", "10000"
    )
    assert listed.returncode == 0, listed.stderr
    assert started.invoice.id in {i["id"] for i in json.loads(listed.stdout)["invoices"]}
    paid = await asyncio.to_thread(_admin, resources, "pay", started.invoice.id, "--json")
    assert paid.returncode == 0, paid.stderr
    assert json.loads(paid.stdout)["invoice"]["state"] == "paid"
    subscription = (
        await subs.ListSubscriptions(pb.ListSubscriptionsRequest(), metadata=reader.metadata)
    ).subscriptions[0]
    assert subscription.state == pb.SUBSCRIPTION_STATE_ACTIVE
    still_open = await asyncio.to_thread(
        _admin, resources, "list", "--open", "--json", "--limit", "10000"
    )
    assert started.invoice.id not in {i["id"] for i in json.loads(still_open.stdout)["invoices"]}
    again = await asyncio.to_thread(_admin, resources, "pay", started.invoice.id)
    assert again.returncode == 2 and "nothing to pay" in again.stderr
    bad = await asyncio.to_thread(_admin, resources, "pay", "not-an-id")
    assert bad.returncode == 2 and "Traceback" not in bad.stderr


async def test_auto_pay_makes_a_subscription_active_at_once(
    channel: aio.Channel,
    sign_up: SignUp,
    resources: Resources,
) -> None:
    from foretell.auth.policy import Role
    from foretell.auth.principal import Principal
    from foretell.services.subscription import _queries

    model = await sold_model(channel, sign_up, resources, trial_days=0)
    reader = await sign_up(account_pb.ROLE_SUBSCRIBER)
    settings = dataclasses.replace(resources.settings, billing_auto_pay="on")
    billing = _queries.Billing(settings, processor_for(settings), resources.clock())
    principal = Principal(uuid.UUID(reader.user.id), Role.SUBSCRIBER, "jwt")
    sub, invoice, _ = await _queries.subscribe(resources.db, principal, model.name, billing)
    assert sub.state == "active"
    assert invoice is not None and invoice.state == "paid"
    assert invoice.payment is not None and invoice.payment.processor == "manual"


# --- paging -----------------------------------------------------------------------------------


@pytest.fixture
async def admin(resources: Resources, account: account_grpc.AccountServiceAsyncStub) -> SignedIn:
    email = unique_email("ops")
    await create_user(
        resources.db,
        email=email,
        password=PASSWORD,
        display_name="Ops",
        role=Role.ADMIN,
        now=resources.clock(),
    )
    login = await account.Login(account_pb.LoginRequest(email=email, password=PASSWORD))
    return SignedIn(login.user, login.tokens, email, PASSWORD)


async def _every_page(
    list_call: Callable[..., Awaitable[Any]],
    request: pb.ListSubscriptionsRequest | pb.ListInvoicesRequest,
    field: str,
    metadata: Sequence[tuple[str, str]],
) -> list[list[str]]:
    """The ids of every page, in order, following next_page_token to the end."""
    pages: list[list[str]] = []
    while True:
        page = await list_call(request, metadata=metadata)
        pages.append([item.id for item in getattr(page, field)])
        if not page.next_page_token:
            return pages
        assert len(pages) < 100, "the pages never end"
        request.page_token = page.next_page_token


async def test_subscriptions_and_invoices_page_in_order_each_item_once(
    channel: aio.Channel,
    subs: pb_grpc.SubscriptionServiceAsyncStub,
    sign_up: SignUp,
    resources: Resources,
    clock: MovableClock,
    admin: SignedIn,
) -> None:
    model = await sold_model(channel, sign_up, resources, trial_days=0)
    alice = await sign_up(account_pb.ROLE_SUBSCRIBER)
    bob = await sign_up(account_pb.ROLE_SUBSCRIBER)
    # Five subscriptions (and five first invoices) of Alice's, one at a time: each canceled
    # before the next; Bob's one in between.
    alices: list[str] = []
    for i in range(5):
        started = await subs.Subscribe(
            pb.SubscribeRequest(model=model.name), metadata=alice.metadata
        )
        alices.append(started.subscription.id)
        await subs.CancelSubscription(
            pb.CancelSubscriptionRequest(id=started.subscription.id, immediately=True),
            metadata=alice.metadata,
        )
        if i == 2:
            await subs.Subscribe(pb.SubscribeRequest(model=model.name), metadata=bob.metadata)
        clock.advance(timedelta(hours=1))
    # Three of them created at the same instant: the id orders them.
    await _sql(
        resources,
        "UPDATE subscriptions SET created_at = $1 WHERE id = ANY($2::uuid[])",
        datetime(2020, 1, 1, tzinfo=UTC),
        [uuid.UUID(s) for s in alices[1:4]],
    )
    tied = sorted(alices[1:4], key=uuid.UUID)
    newest_first = [alices[4], alices[0], *tied]

    own = await _every_page(
        subs.ListSubscriptions,
        pb.ListSubscriptionsRequest(page_size=2),
        "subscriptions",
        alice.metadata,
    )
    assert [len(page) for page in own] == [2, 2, 1]
    assert [s for page in own for s in page] == newest_first
    one_page = await subs.ListSubscriptions(
        pb.ListSubscriptionsRequest(model=model.name), metadata=alice.metadata
    )
    assert [s.id for s in one_page.subscriptions] == newest_first
    assert not one_page.next_page_token
    # An admin pages through everyone's; filtered to the model, that is Alice's and Bob's.
    everyone = await _every_page(
        subs.ListSubscriptions,
        pb.ListSubscriptionsRequest(model=model.name, page_size=1),
        "subscriptions",
        admin.metadata,
    )
    assert [len(page) for page in everyone] == [1] * 6
    listed = [s for page in everyone for s in page]
    assert len(set(listed)) == 6 and set(newest_first) < set(listed)

    invoices = await _every_page(
        subs.ListInvoices, pb.ListInvoicesRequest(page_size=2), "invoices", alice.metadata
    )
    assert [len(page) for page in invoices] == [2, 2, 1]
    paged = [i for page in invoices for i in page]
    whole = (await subs.ListInvoices(pb.ListInvoicesRequest(), metadata=alice.metadata)).invoices
    assert paged == [i.id for i in whole]
    assert [i.subscription_id for i in whole] == list(reversed(alices))  # newest issued first
    of_one = await _every_page(
        subs.ListInvoices,
        pb.ListInvoicesRequest(subscription_id=alices[0], page_size=1),
        "invoices",
        alice.metadata,
    )
    assert of_one == [[whole[-1].id]]
    assert (
        len(
            await _every_page(
                subs.ListInvoices, pb.ListInvoicesRequest(page_size=1), "invoices", bob.metadata
            )
        )
        == 1
    )


async def test_bad_page_sizes_and_tokens_name_the_field(
    channel: aio.Channel,
    subs: pb_grpc.SubscriptionServiceAsyncStub,
    sign_up: SignUp,
    resources: Resources,
) -> None:
    model = await sold_model(channel, sign_up, resources, trial_days=0)
    reader = await sign_up(account_pb.ROLE_SUBSCRIBER)
    md = reader.metadata
    first = await subs.Subscribe(pb.SubscribeRequest(model=model.name), metadata=md)
    await subs.CancelSubscription(
        pb.CancelSubscriptionRequest(id=first.subscription.id, immediately=True), metadata=md
    )
    await subs.Subscribe(pb.SubscribeRequest(model=model.name), metadata=md)
    sub_token = (
        await subs.ListSubscriptions(pb.ListSubscriptionsRequest(page_size=1), metadata=md)
    ).next_page_token
    invoice_token = (
        await subs.ListInvoices(pb.ListInvoicesRequest(page_size=1), metadata=md)
    ).next_page_token
    assert sub_token and invoice_token
    garbage = ["nope", "!!!", base64.urlsafe_b64encode(b'["a", 1]').decode(), invoice_token]
    cases: list[tuple[Awaitable[object], str]] = [
        *(
            (subs.ListSubscriptions(pb.ListSubscriptionsRequest(page_token=t), metadata=md), t)
            for t in garbage
        ),
        *(
            (subs.ListInvoices(pb.ListInvoicesRequest(page_token=t), metadata=md), t)
            for t in [*garbage[:3], sub_token]
        ),
        # The same call with other filters than the token's.
        (
            subs.ListSubscriptions(
                pb.ListSubscriptionsRequest(model=model.name, page_token=sub_token), metadata=md
            ),
            "other model",
        ),
        (
            subs.ListInvoices(
                pb.ListInvoicesRequest(
                    subscription_id=first.subscription.id, page_token=invoice_token
                ),
                metadata=md,
            ),
            "other subscription",
        ),
    ]
    for call, why in cases:
        with pytest.raises(grpc.RpcError) as caught:
            await call
        assert status_code(caught.value) == grpc.StatusCode.INVALID_ARGUMENT, why
        assert set(field_violations(caught.value)) == {"page_token"}, why
    for size in (1001, -1):
        for call in (
            subs.ListSubscriptions(pb.ListSubscriptionsRequest(page_size=size), metadata=md),
            subs.ListInvoices(pb.ListInvoicesRequest(page_size=size), metadata=md),
        ):
            with pytest.raises(grpc.RpcError) as caught:
                await call
            assert status_code(caught.value) == grpc.StatusCode.INVALID_ARGUMENT
            assert set(field_violations(caught.value)) == {"page_size"}
    # The edges are fine.
    for size in (1, 1000):
        await subs.ListSubscriptions(pb.ListSubscriptionsRequest(page_size=size), metadata=md)
        await subs.ListInvoices(pb.ListInvoicesRequest(page_size=size), metadata=md)


async def test_listing_a_page_settles_only_the_subscriptions_on_it(
    channel: aio.Channel,
    subs: pb_grpc.SubscriptionServiceAsyncStub,
    sign_up: SignUp,
    resources: Resources,
    clock: MovableClock,
    admin: SignedIn,
) -> None:
    model = await sold_model(channel, sign_up, resources, trial_days=3)
    # Signed up before the clock moves: a token issued on the moved clock is not valid yet.
    readers = [await sign_up(account_pb.ROLE_SUBSCRIBER) for _ in range(2)]
    started = []
    for reader in readers:
        started.append(
            await subs.Subscribe(pb.SubscribeRequest(model=model.name), metadata=reader.metadata)
        )
        clock.advance(timedelta(minutes=1))
    older, newer = (s.subscription.id for s in started)
    clock.advance(4 * DAY)  # both trials have ended; no billing run has seen it

    async def stored(sub_id: str) -> str:
        async with resources.db.session() as session:
            return str(
                await session.scalar(
                    select(Subscription.state).where(Subscription.id == uuid.UUID(sub_id))
                )
            )

    page = await subs.ListSubscriptions(
        pb.ListSubscriptionsRequest(model=model.name, page_size=1), metadata=admin.metadata
    )
    (listed,) = page.subscriptions
    assert listed.id == newer and listed.state == pb.SUBSCRIPTION_STATE_ACTIVE
    assert (await stored(newer), await stored(older)) == ("active", "trialing")
    # The next page settles the other one.
    page = await subs.ListSubscriptions(
        pb.ListSubscriptionsRequest(model=model.name, page_size=1, page_token=page.next_page_token),
        metadata=admin.metadata,
    )
    assert [s.id for s in page.subscriptions] == [older]
    assert page.subscriptions[0].state == pb.SUBSCRIPTION_STATE_ACTIVE
    assert await stored(older) == "active"
    assert not page.next_page_token


async def test_getting_a_subscription_settles_it_first(
    channel: aio.Channel,
    subs: pb_grpc.SubscriptionServiceAsyncStub,
    sign_up: SignUp,
    resources: Resources,
    clock: MovableClock,
) -> None:
    model = await sold_model(channel, sign_up, resources, trial_days=3)
    reader = await sign_up(account_pb.ROLE_SUBSCRIBER)
    started = await subs.Subscribe(pb.SubscribeRequest(model=model.name), metadata=reader.metadata)
    assert started.subscription.state == pb.SUBSCRIPTION_STATE_TRIALING
    clock.advance(4 * DAY)  # the trial has ended; no billing run has seen it
    got = await subs.GetSubscription(
        pb.GetSubscriptionRequest(id=started.subscription.id), metadata=reader.metadata
    )
    assert got.subscription.state == pb.SUBSCRIPTION_STATE_ACTIVE
    assert got.subscription.model_title == "Test model"
    with pytest.raises(grpc.RpcError) as caught:
        await subs.GetSubscription(
            pb.GetSubscriptionRequest(id=str(uuid.uuid4())), metadata=reader.metadata
        )
    assert status_code(caught.value) == grpc.StatusCode.NOT_FOUND
