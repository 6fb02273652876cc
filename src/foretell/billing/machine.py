"""The subscription state machine: every state change of a subscription goes through `fire`,
which looks the change up in one table (state x event -> state), applies it and records it in
the audit log (subscription_events). Nothing else assigns `Subscription.state`.

What triggers events (the clock passing a trial end, a due date or a period end; a payment;
a subscriber's request) lives in `foretell.billing.settle` and the service; the side effects
that come with them (issuing an invoice, moving the period) are done by the caller before it
fires the event, in the same transaction.
"""

from __future__ import annotations

import enum
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession

from foretell import metrics
from foretell.db.models import Subscription, SubscriptionEvent
from foretell.db.notify import announce_access
from foretell.errors import FailedPrecondition


class State(enum.StrEnum):
    TRIALING = "trialing"
    INCOMPLETE = "incomplete"
    ACTIVE = "active"
    PAST_DUE = "past_due"
    CANCELED = "canceled"
    EXPIRED = "expired"


class Event(enum.StrEnum):
    # Creation (from no state): with a first trial, or with the first invoice issued.
    SUBSCRIBE_TRIAL = "subscribe_trial"
    SUBSCRIBE = "subscribe"
    # The trial is over: the first month is invoiced.
    TRIAL_ENDED = "trial_ended"
    # A paid month is over: the next one is invoiced.
    RENEWED = "renewed"
    # An open invoice was paid (or credited in full).
    INVOICE_PAID = "invoice_paid"
    # An invoice is unpaid at its due time.
    INVOICE_OVERDUE = "invoice_overdue"
    # The grace period of an overdue invoice is over.
    GRACE_ENDED = "grace_ended"
    # The period ended while an invoice was still overdue.
    PERIOD_ENDED_UNPAID = "period_ended_unpaid"
    # The subscriber asked to end at period end, or now; and took the first back.
    CANCEL = "cancel"
    CANCEL_NOW = "cancel_now"
    RESUME = "resume"
    # The period ended with a cancellation pending.
    ENDED_AT_PERIOD_END = "ended_at_period_end"
    # The model stopped being the subscriber's to read (made private, retired, deleted):
    # billing follows access, so the subscription ends now.
    ACCESS_ENDED = "access_ended"


LIVE = frozenset({State.TRIALING, State.INCOMPLETE, State.ACTIVE, State.PAST_DUE})
# States in which forecasts are readable (PAST_DUE only lasts its grace period).
ENTITLED = frozenset({State.TRIALING, State.ACTIVE, State.PAST_DUE})
ENDED = frozenset({State.CANCELED, State.EXPIRED})


TRANSITIONS: dict[tuple[State | None, Event], State] = {
    (None, Event.SUBSCRIBE_TRIAL): State.TRIALING,
    (None, Event.SUBSCRIBE): State.INCOMPLETE,
    (State.TRIALING, Event.TRIAL_ENDED): State.ACTIVE,
    (State.ACTIVE, Event.RENEWED): State.ACTIVE,
    (State.INCOMPLETE, Event.INVOICE_PAID): State.ACTIVE,
    (State.ACTIVE, Event.INVOICE_PAID): State.ACTIVE,
    (State.PAST_DUE, Event.INVOICE_PAID): State.ACTIVE,
    (State.ACTIVE, Event.INVOICE_OVERDUE): State.PAST_DUE,
    # Never paid, never read: an unpaid first invoice ends it without a grace period.
    (State.INCOMPLETE, Event.INVOICE_OVERDUE): State.EXPIRED,
    (State.PAST_DUE, Event.GRACE_ENDED): State.EXPIRED,
    (State.PAST_DUE, Event.PERIOD_ENDED_UNPAID): State.EXPIRED,
    (State.TRIALING, Event.CANCEL): State.TRIALING,
    (State.ACTIVE, Event.CANCEL): State.ACTIVE,
    (State.PAST_DUE, Event.CANCEL): State.PAST_DUE,
    # Nothing paid, nothing to wait for: it ends at once (its invoice is credited).
    (State.INCOMPLETE, Event.CANCEL): State.CANCELED,
    (State.TRIALING, Event.CANCEL_NOW): State.CANCELED,
    (State.INCOMPLETE, Event.CANCEL_NOW): State.CANCELED,
    (State.ACTIVE, Event.CANCEL_NOW): State.CANCELED,
    (State.PAST_DUE, Event.CANCEL_NOW): State.CANCELED,
    (State.TRIALING, Event.RESUME): State.TRIALING,
    (State.ACTIVE, Event.RESUME): State.ACTIVE,
    (State.PAST_DUE, Event.RESUME): State.PAST_DUE,
    (State.TRIALING, Event.ENDED_AT_PERIOD_END): State.CANCELED,
    (State.ACTIVE, Event.ENDED_AT_PERIOD_END): State.CANCELED,
    (State.PAST_DUE, Event.ENDED_AT_PERIOD_END): State.CANCELED,
    (State.TRIALING, Event.ACCESS_ENDED): State.CANCELED,
    (State.INCOMPLETE, Event.ACCESS_ENDED): State.CANCELED,
    (State.ACTIVE, Event.ACCESS_ENDED): State.CANCELED,
    (State.PAST_DUE, Event.ACCESS_ENDED): State.CANCELED,
}

# Why a subscription ended, for its subscriber, when the event gives no reason of its own.
_END_REASONS = {
    Event.CANCEL: "canceled before the first payment",
    Event.CANCEL_NOW: "canceled by the subscriber",
    Event.ENDED_AT_PERIOD_END: "canceled by the subscriber at the end of the period",
    Event.INVOICE_OVERDUE: "the first invoice was not paid by its due date",
    Event.GRACE_ENDED: "an invoice was still unpaid when the grace period ended",
    Event.PERIOD_ENDED_UNPAID: "an invoice was still unpaid when the period ended",
}


def next_state(state: State | None, event: Event) -> State:
    """The state `event` leads to from `state`; FAILED_PRECONDITION when it cannot happen."""
    target = TRANSITIONS.get((state, event))
    if target is None:
        where = state.value.upper() if state else "no subscription"
        raise FailedPrecondition(f"cannot {event.value.replace('_', ' ')} from {where}")
    return target


async def fire(
    session: AsyncSession, sub: Subscription, event: Event, now: datetime, detail: str = ""
) -> State:
    """Applies `event` to `sub` (locked by the caller, or new), records it in the audit log and
    announces the change to open forecast streams of the model (on commit)."""
    current = State(sub.state) if sub.state else None
    target = next_state(current, event)
    if event is Event.CANCEL and target in LIVE:
        if sub.cancel_at_period_end:
            raise FailedPrecondition("the subscription is already canceled at period end")
        sub.cancel_at_period_end = True
    elif event is Event.RESUME:
        if not sub.cancel_at_period_end:
            raise FailedPrecondition("the subscription has no cancellation to undo")
        sub.cancel_at_period_end = False
    if target is State.PAST_DUE and current is not State.PAST_DUE:
        sub.past_due_since = sub.past_due_since or now
    elif target is not State.PAST_DUE:
        sub.past_due_since = None
    if target in ENDED:
        sub.ended_at = now
        sub.cancel_at_period_end = False
        sub.end_reason = detail or _END_REASONS.get(event, event.value.replace("_", " "))
    sub.state = target.value
    sub.updated_at = now
    session.add(sub)
    await session.flush()
    session.add(
        SubscriptionEvent(
            subscription_id=sub.id,
            event=event.value,
            from_state=current.value if current else None,
            to_state=target.value,
            at=now,
            detail=detail,
        )
    )
    metrics.BILLING_EVENTS.labels(event.value).inc()
    await announce_access(session, sub.model_id)
    return target
