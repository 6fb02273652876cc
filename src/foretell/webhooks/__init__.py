"""Webhooks for subscribers: each live forecast recorded for a model is POSTed, signed, to the
endpoints its entitled subscribers registered (docs/webhooks.md).

The deliveries are queued by the database itself (a trigger of migration 0011, in the
transaction that records the forecast) and sent by the live lane's periodic worker
(`Dispatcher`), at least once, with retries and exponential back-off."""

from foretell.webhooks._address import (
    MAX_URL_CHARS,
    EndpointRefused,
    Target,
    check_address,
    parse_url,
    resolve,
)
from foretell.webhooks._deliver import (
    WEBHOOKS_CHANNEL,
    Dispatcher,
    backoff_s,
    claim,
    deliver_due,
    send_one,
)
from foretell.webhooks._events import FORECAST_RECORDED, TEST
from foretell.webhooks._http import SendFailed, post
from foretell.webhooks._signing import (
    SECRET_PREFIX,
    TOLERANCE_S,
    SignatureInvalid,
    new_secret,
    sign,
    verify,
)

__all__ = [
    "FORECAST_RECORDED",
    "MAX_URL_CHARS",
    "SECRET_PREFIX",
    "TEST",
    "TOLERANCE_S",
    "WEBHOOKS_CHANNEL",
    "Dispatcher",
    "EndpointRefused",
    "SendFailed",
    "SignatureInvalid",
    "Target",
    "backoff_s",
    "check_address",
    "claim",
    "deliver_due",
    "new_secret",
    "parse_url",
    "post",
    "resolve",
    "send_one",
    "sign",
    "verify",
]
