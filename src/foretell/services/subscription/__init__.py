"""SubscriptionService: plans, subscriptions and invoices (billing itself: foretell.billing)."""

from foretell.services.subscription._servicer import SubscriptionServicer, add_to_server

__all__ = ["SubscriptionServicer", "add_to_server"]
