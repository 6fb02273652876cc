"""Who may read a model's forecasts: its provider, admins, and subscribers whose subscription
is TRIALING, ACTIVE or PAST_DUE within its grace period. Everyone else signed in may list the
delayed sample (forecasts recorded longer ago than FORETELL_SAMPLE_DELAY_DAYS) when
FORETELL_DELAYED_SAMPLE is on.

The check settles the caller's subscription first (foretell.billing.settle), so a trial that
ended an hour ago is over now, not at the next daily billing run.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select

from foretell.auth.policy import Role
from foretell.auth.principal import Principal
from foretell.billing.machine import ENTITLED, LIVE, State
from foretell.billing.payments import processor_for
from foretell.billing.settle import settle_if_due
from foretell.db import Database
from foretell.db.models import Model, Subscription
from foretell.errors import PermissionDenied
from foretell.settings import Settings


class Reach(enum.Enum):
    FULL = "full"
    SAMPLE = "sample"


@dataclass(frozen=True)
class Access:
    reach: Reach
    # For SAMPLE: only forecasts recorded before this moment.
    recorded_before: datetime | None = None


async def entitled(
    db: Database, principal: Principal, model: Model, now: datetime, settings: Settings
) -> bool:
    if principal.role == Role.ADMIN or model.owner_id == principal.user_id:
        return True
    async with db.session() as session:
        sub = await session.scalar(
            select(Subscription).where(
                Subscription.subscriber_id == principal.user_id,
                Subscription.model_id == model.id,
                Subscription.state.in_([s.value for s in LIVE]),
            )
        )
    if sub is None:
        return False
    # Every forecast read passes here: a plain read unless an event of the subscription is
    # due, and only then a locked, written settlement.
    sub, _ = await settle_if_due(db, sub, now, settings, processor_for(settings))
    return State(sub.state) in ENTITLED


async def still_entitled(
    db: Database, settings: Settings, sub: Subscription, now: datetime
) -> bool:
    """Whether `sub` (read without a lock) entitles its subscriber at `now`, for a caller that
    asks on every event it sends (webhooks): within its period, and a past-due one within its
    grace, no event of the state machine can end the entitlement (an overdue invoice only makes
    an active subscription past due), so the answer costs no query; otherwise it is settled."""
    state = State(sub.state)
    if state not in ENTITLED:
        return False
    grace = timedelta(days=settings.billing_grace_days)
    if now < sub.period_end and (
        state is not State.PAST_DUE
        or (sub.past_due_since is not None and now < sub.past_due_since + grace)
    ):
        return True
    sub, _ = await settle_if_due(db, sub, now, settings, processor_for(settings))
    return State(sub.state) in ENTITLED


async def forecast_access(
    db: Database, principal: Principal, model: Model, now: datetime, settings: Settings
) -> Access:
    """How much of the model's forecast history the caller may list; PERMISSION_DENIED when
    nothing."""
    if await entitled(db, principal, model, now, settings):
        return Access(Reach.FULL)
    if settings.delayed_sample == "on":
        return Access(Reach.SAMPLE, now - timedelta(days=settings.sample_delay_days))
    raise PermissionDenied(
        f"subscribe to model {model.name!r} to read its forecasts (`foretell subscribe`)"
    )


async def require_entitled(
    db: Database, principal: Principal, model: Model, now: datetime, settings: Settings
) -> None:
    """For live forecasts (StreamForecasts): the delayed sample never applies."""
    if not await entitled(db, principal, model, now, settings):
        raise PermissionDenied(
            f"subscribe to model {model.name!r} to receive its forecasts (`foretell subscribe`)"
        )
