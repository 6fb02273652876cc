"""Plans, subscriptions, invoices and payments: the state machine (`machine`), the billing
that drives it (`settle`), payment gateways (`gateway`) and forecast entitlements
(`entitlement`)."""
