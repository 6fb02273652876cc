"""Who may call what: one explicit entry per RPC of every service. A method missing here is
refused (and a test fails), so adding an RPC forces a decision about its access."""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Role(enum.StrEnum):
    PROVIDER = "provider"
    SUBSCRIBER = "subscriber"
    ADMIN = "admin"
    # A vendor's script that pushes bars for the symbols an admin granted it, nothing else.
    FEEDER = "feeder"


# Every role but the data feeder, which is kept to the ingest RPC alone.
ANYONE_SIGNED_IN = frozenset({Role.PROVIDER, Role.SUBSCRIBER, Role.ADMIN})


@dataclass(frozen=True)
class Policy:
    # None: no credential needed (the method authenticates by other means, e.g. a password).
    roles: frozenset[Role] | None
    # Whether an API key is an acceptable credential (read-only methods).
    api_key: bool = False
    # Roles whose API keys are acceptable even though `api_key` is False: a data feeder's
    # key, for the one method it exists to call.
    api_key_roles: frozenset[Role] = frozenset()

    def accepts_api_key(self, role: Role) -> bool:
        return self.api_key or role in self.api_key_roles


PUBLIC = Policy(roles=None)
SIGNED_IN = Policy(roles=ANYONE_SIGNED_IN)
SIGNED_IN_READ = Policy(roles=ANYONE_SIGNED_IN, api_key=True)

PROVIDERS = Policy(roles=frozenset({Role.PROVIDER}))
SUBSCRIBERS_AND_PROVIDERS = Policy(roles=frozenset({Role.SUBSCRIBER, Role.PROVIDER}))
PROVIDERS_AND_ADMINS = Policy(roles=frozenset({Role.PROVIDER, Role.ADMIN}))
ADMINS = Policy(roles=frozenset({Role.ADMIN}))
# Admins (signed in) and data feeders (signed in or with their API key, as vendor scripts
# run); the service keeps a feeder to the symbols it was granted.
FEEDERS_AND_ADMINS = Policy(
    roles=frozenset({Role.ADMIN, Role.FEEDER}), api_key_roles=frozenset({Role.FEEDER})
)
# Nobody, whatever their role: for RPCs that exist only on a run's own Unix socket, where the
# socket itself is the capability and no interceptor runs.
NOBODY = Policy(roles=frozenset())

_REGISTRY = "/foretell.registry.v1.RegistryService/"
_DATAFEED = "/foretell.datafeed.v1.DataFeedService/"
_FORECAST = "/foretell.forecast.v1.ForecastService/"
_SUBSCRIPTION = "/foretell.subscription.v1.SubscriptionService/"

POLICY: dict[str, Policy] = {
    "/foretell.account.v1.AccountService/CreateUser": PUBLIC,
    "/foretell.account.v1.AccountService/Login": PUBLIC,
    "/foretell.account.v1.AccountService/Refresh": PUBLIC,
    "/foretell.account.v1.AccountService/Logout": PUBLIC,
    "/foretell.account.v1.AccountService/GetJwks": PUBLIC,
    "/foretell.account.v1.AccountService/GetMe": SIGNED_IN_READ,
    # Key management needs a session: a leaked API key must not be able to mint more keys.
    "/foretell.account.v1.AccountService/CreateApiKey": SIGNED_IN,
    "/foretell.account.v1.AccountService/ListApiKeys": SIGNED_IN,
    "/foretell.account.v1.AccountService/RevokeApiKey": SIGNED_IN,
    # Ownership (only the owner changes a model; others' private models are invisible) is
    # checked by the service; this table only says which roles may try.
    _REGISTRY + "CreateModel": PROVIDERS,
    _REGISTRY + "GetModel": SIGNED_IN_READ,
    _REGISTRY + "ListModels": SIGNED_IN_READ,
    _REGISTRY + "UpdateModel": PROVIDERS,
    _REGISTRY + "DeleteModel": PROVIDERS,
    _REGISTRY + "UploadVersion": PROVIDERS,
    _REGISTRY + "GetVersion": SIGNED_IN_READ,
    _REGISTRY + "ListVersions": SIGNED_IN_READ,
    _REGISTRY + "StreamBuildLog": PROVIDERS_AND_ADMINS,
    _REGISTRY + "PublishVersion": PROVIDERS,
    # Admins may take a model offline (moderation); they never publish for a provider.
    _REGISTRY + "TakeOffline": PROVIDERS_AND_ADMINS,
    # The caller's own models, with their business (subscribers, money): providers only.
    _REGISTRY + "ListModelSummaries": PROVIDERS,
    # Market data is the platform's: everyone signed in reads it (API keys too, for scripts);
    # admins and data feeders (for their granted symbols) add it; only an admin corrects it.
    _DATAFEED + "ListSymbols": SIGNED_IN_READ,
    _DATAFEED + "GetBars": SIGNED_IN_READ,
    _DATAFEED + "IngestBars": FEEDERS_AND_ADMINS,
    _DATAFEED + "CorrectBar": ADMINS,
    _DATAFEED + "SetSymbolCalendar": ADMINS,
    # Only a model in its sandbox submits forecasts, over its run's socket
    # (foretell.runs); on the public servers nobody may, so no signed-in user can forge them.
    _FORECAST + "SubmitForecasts": NOBODY,
    # Reads (API keys too, for scripts). The service checks entitlements (foretell.billing:
    # a live subscription, the owner, admins; others get the delayed sample), hides others'
    # private models (NOT_FOUND) and keeps runs, with their logs, to the owner and admins.
    _FORECAST + "ListForecasts": SIGNED_IN_READ,
    _FORECAST + "StreamForecasts": SIGNED_IN_READ,
    _FORECAST + "ListRuns": SIGNED_IN_READ,
    _FORECAST + "GetRun": SIGNED_IN_READ,
    # A provider tries their own model (the service checks ownership); it runs the sandbox
    # in the serving process, so no API keys: a leaked key must not be a way to burn CPU.
    _FORECAST + "DryRun": PROVIDERS,
    # Plans are the catalog's: everyone signed in reads them; the service keeps changes to the
    # model's owner.
    _SUBSCRIPTION + "GetPlan": SIGNED_IN_READ,
    _SUBSCRIPTION + "UpdatePlan": PROVIDERS,
    # Subscribers and providers buy (not their own models: the service refuses); admins read
    # every model anyway. Spending money needs a session, not an API key.
    _SUBSCRIPTION + "Subscribe": SUBSCRIBERS_AND_PROVIDERS,
    _SUBSCRIPTION + "CancelSubscription": SIGNED_IN,
    _SUBSCRIPTION + "ResumeSubscription": SIGNED_IN,
    # The caller's own (an admin's: everyone's); API keys may read them, for scripts.
    _SUBSCRIPTION + "ListSubscriptions": SIGNED_IN_READ,
    _SUBSCRIPTION + "GetSubscription": SIGNED_IN_READ,
    _SUBSCRIPTION + "ListInvoices": SIGNED_IN_READ,
    # Webhooks of the caller's own subscriptions (the service checks). Registering an
    # endpoint hands out a signing secret, so it needs a session like API keys do; the lists
    # are readable with a key, for scripts.
    _SUBSCRIPTION + "CreateWebhookEndpoint": SIGNED_IN,
    _SUBSCRIPTION + "ListWebhookEndpoints": SIGNED_IN_READ,
    _SUBSCRIPTION + "DeleteWebhookEndpoint": SIGNED_IN,
    _SUBSCRIPTION + "SendTestWebhook": SIGNED_IN,
    _SUBSCRIPTION + "ListWebhookDeliveries": SIGNED_IN_READ,
    # Measured by the platform, open to everyone signed in for the models they can see (the
    # service hides others' private models). The ledger's payloads hold the forecasts: GetLedger
    # serves them to those entitled to read them (the service checks), hashes to the rest.
    _FORECAST + "GetPerformance": SIGNED_IN_READ,
    _FORECAST + "GetLedger": SIGNED_IN_READ,
}

# Infrastructure services every process exposes; they carry no user data.
INFRASTRUCTURE_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.v1alpha.ServerReflection/")
