"""Plans, subscriptions, invoices and payments: the state machine (`machine`), the billing
that drives it (`settle`), payment processors (`payments`) and forecast entitlements
(`entitlement`)."""
