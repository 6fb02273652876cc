"""The JSON bodies of webhook events. A delivery's body is rebuilt from immutable rows (the
forecast, the delivery's creation time), so every retry sends the same bytes."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from foretell.db.models import Forecast, WebhookDelivery

FORECAST_RECORDED = "forecast.recorded"
TEST = "webhook.test"


def _time(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def message_id(delivery: WebhookDelivery) -> str:
    """The `webhook-id`: the same on every retry of a delivery, so receivers can drop one they
    have handled."""
    return f"msg_{delivery.id.hex}"


def body(
    delivery: WebhookDelivery, subscription_id: str, model: str, forecast: Forecast | None
) -> bytes:
    data: dict[str, Any] = {"subscription_id": subscription_id, "model": model}
    if forecast is not None:
        data.update(
            run_id=str(forecast.run_id),
            symbol=forecast.symbol,
            as_of=_time(forecast.as_of),
            target_time=_time(forecast.target_time),
            direction=forecast.direction,
            predicted_return=forecast.predicted_return,
            probability=forecast.probability,
            recorded_at=_time(forecast.recorded_at),
        )
    else:
        data["message"] = "a test event: your endpoint is reachable and verifies signatures"
    event = {"type": delivery.event_type, "timestamp": _time(delivery.created_at), "data": data}
    return json.dumps(event, separators=(",", ":"), sort_keys=True).encode()
