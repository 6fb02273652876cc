"""A provider's own models summarised for running them: subscriptions by state, this month's
money received, the last live runs. One query per aspect for a whole page of models, never
one per model."""

from __future__ import annotations

import dataclasses
import uuid
from collections import defaultdict
from datetime import UTC, datetime

from sqlalchemy import func, select

from foretell.auth.principal import Principal
from foretell.db import Database, Version
from foretell.db.models import Invoice, Payment, Run, Subscription
from foretell.services.registry._queries import ModelView, list_models

RECENT_RUNS = 10


@dataclasses.dataclass(frozen=True)
class RecentRun:
    id: uuid.UUID
    version: int
    as_of: datetime
    outcome: str


@dataclasses.dataclass(frozen=True)
class Summary:
    view: ModelView
    subscribers: dict[str, int]
    revenue: dict[str, int]
    recent_runs: list[RecentRun]


def month_start(now: datetime) -> datetime:
    return now.astimezone(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)


async def summaries(
    db: Database, principal: Principal, *, after: str | None, limit: int, since: datetime
) -> list[Summary]:
    views = await list_models(
        db, principal, after=after, limit=limit, symbol="", tag="", resolution=None,
        only_mine=True,
    )  # fmt: skip
    ids = [view.model.id for view in views]
    if not ids:
        return []
    counts: dict[uuid.UUID, dict[str, int]] = defaultdict(dict)
    revenue: dict[uuid.UUID, dict[str, int]] = defaultdict(dict)
    runs: dict[uuid.UUID, list[RecentRun]] = defaultdict(list)
    by_state = (
        select(Subscription.model_id, Subscription.state, func.count())
        .where(Subscription.model_id.in_(ids))
        .group_by(Subscription.model_id, Subscription.state)
    )
    # Money received: a payment's own amount and currency, dated by when it was paid.
    paid = (
        select(Invoice.model_id, Payment.currency, func.sum(Payment.amount_minor))
        .join(Payment, Payment.invoice_id == Invoice.id)
        .where(Invoice.model_id.in_(ids), Payment.paid_at >= since)
        .group_by(Invoice.model_id, Payment.currency)
    )
    ranked = (
        select(
            Run.model_id,
            Run.id,
            Version.number,
            Run.as_of,
            Run.outcome,
            func.row_number()
            .over(partition_by=Run.model_id, order_by=(Run.as_of.desc(), Run.id.desc()))
            .label("rank"),
        )
        .join(Version, Version.id == Run.version_id)
        .where(Run.model_id.in_(ids), Run.kind == "live")
        .subquery()
    )
    recent = (
        select(ranked.c.model_id, ranked.c.id, ranked.c.number, ranked.c.as_of, ranked.c.outcome)
        .where(ranked.c.rank <= RECENT_RUNS)
        .order_by(ranked.c.model_id, ranked.c.rank)
    )
    async with db.session() as session:
        for model_id, state, count in (await session.execute(by_state)).all():
            counts[model_id][state] = int(count)
        for model_id, currency, total in (await session.execute(paid)).all():
            revenue[model_id][currency] = int(total)
        for model_id, run_id, number, as_of, outcome in (await session.execute(recent)).all():
            runs[model_id].append(RecentRun(run_id, number, as_of, outcome))
    return [
        Summary(view, counts[view.model.id], revenue[view.model.id], runs[view.model.id])
        for view in views
    ]
