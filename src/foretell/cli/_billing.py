"""Plans and subscriptions: plan, subscribe, subscriptions, cancel, resume, invoices."""

from __future__ import annotations

from decimal import Decimal, InvalidOperation

import click

from foretell.cli._client import connect, pages
from foretell.cli._exit import CliError, Exit
from foretell.cli._output import (
    echo_json,
    echo_table,
    enum_label,
    json_option,
    message_dict,
    short_time,
)
from foretell.cli._target import url_option
from foretell.currencies import MINOR_UNITS, format_minor
from foretell.subscription.v1 import subscription_service_pb2 as pb


def _subscription_count(page: pb.ListSubscriptionsResponse) -> int:
    return len(page.subscriptions)


def _invoice_count(page: pb.ListInvoicesResponse) -> int:
    return len(page.invoices)


def _minor(price: str, currency: str) -> int:
    """ "49.00", "USD" -> 4900; more decimals than the currency has is an error."""
    exponent = MINOR_UNITS.get(currency)
    if exponent is None:
        raise CliError(f"unknown currency {currency!r}: use an ISO 4217 code, e.g. USD", Exit.USAGE)
    try:
        amount = Decimal(price) * (10**exponent)
    except InvalidOperation:
        raise CliError(f"--price {price!r} is not an amount, e.g. 49.00", Exit.USAGE) from None
    if amount != amount.to_integral_value():
        raise CliError(f"--price {price}: {currency} has {exponent} decimals", Exit.USAGE)
    return int(amount)


def _plan_line(plan: pb.Plan) -> str:
    trial = f", {plan.trial_days}-day trial" if plan.trial_days else ", no trial"
    return f"model {plan.model}: {format_minor(plan.price_minor, plan.currency)} a month{trial}"


def _state(sub: pb.Subscription) -> str:
    label = enum_label(pb.SubscriptionState.Name(sub.state), "SUBSCRIPTION_STATE_")
    return f"{label} (ends at period end)" if sub.cancel_at_period_end else label


def _sub_line(sub: pb.Subscription) -> str:
    return (
        f"subscription {sub.id} to {sub.model}: {_state(sub)}, period until "
        f"{short_time(sub.current_period_end_time)}"
    )


@click.command(short_help="Show or set a model's plan (price and trial).")
@click.argument("model")
@click.option("--price", help="Monthly price, e.g. 49.00 (in --currency).")
@click.option("--currency", default="USD", show_default=True, help="ISO 4217 code.")
@click.option("--trial-days", type=int, help="Free days before the first invoice, 0 to 30.")
@url_option
@json_option
def plan(
    model: str, price: str | None, currency: str, trial_days: int | None, url: str, as_json: bool
) -> None:
    """Show a model's plan, or (its provider) set it. A new price applies from each
    subscription's next period.

    \b
    Examples:
      foretell plan eurusd-momentum
      foretell plan eurusd-momentum --price 49.00 --currency USD --trial-days 14
    """
    with connect(url) as client:
        if price is None and trial_days is None:
            got = client.unary(client.subscription.GetPlan, pb.GetPlanRequest(model=model)).plan
        else:
            if price is None or trial_days is None:
                raise CliError("set --price and --trial-days together", Exit.USAGE)
            currency = currency.upper()
            request = pb.UpdatePlanRequest(
                model=model,
                plan=pb.Plan(
                    price_minor=_minor(price, currency), currency=currency, trial_days=trial_days
                ),
            )
            got = client.unary(client.subscription.UpdatePlan, request).plan
    if as_json:
        echo_json({"plan": message_dict(got)})
    else:
        click.echo(_plan_line(got))


@click.command(short_help="Subscribe to a model.")
@click.argument("model")
@url_option
@json_option
def subscribe(model: str, url: str, as_json: bool) -> None:
    """Subscribe to a model: a free trial when its plan has one and you never trialed it,
    else the first invoice is issued and forecasts are readable once it is paid.

    \b
    Example:
      foretell subscribe eurusd-momentum
    """
    with connect(url) as client:
        response = client.unary(client.subscription.Subscribe, pb.SubscribeRequest(model=model))
    if as_json:
        echo_json(message_dict(response))
        return
    click.echo(_sub_line(response.subscription))
    if response.HasField("invoice"):
        invoice = response.invoice
        click.echo(
            f"invoice {invoice.id}: {format_minor(invoice.amount_due_minor, invoice.currency)}"
            f" due {short_time(invoice.due_time)}"
        )


@click.command(short_help="List your subscriptions.")
@click.option("--model", default="", help="Only subscriptions to this model.")
@url_option
@json_option
def subscriptions(model: str, url: str, as_json: bool) -> None:
    """List your subscriptions, newest first.

    \b
    Example:
      foretell subscriptions
    """
    request = pb.ListSubscriptionsRequest(model=model)
    with connect(url) as client:
        # Every page: one user's subscriptions are few, and the table shows them all.
        listed = [
            sub
            for page in pages(
                client, client.subscription.ListSubscriptions, request, _subscription_count
            )
            for sub in page.subscriptions
        ]
    if as_json:
        echo_json({"subscriptions": [message_dict(s) for s in listed]})
        return
    echo_table(
        ("ID", "MODEL", "STATE", "PERIOD END", "CREATED"),
        [
            (
                s.id,
                s.model,
                _state(s),
                short_time(s.current_period_end_time),
                short_time(s.create_time),
            )
            for s in listed
        ],
    )


@click.command(short_help="Cancel a subscription (at period end by default).")
@click.argument("subscription_id")
@click.option(
    "--now",
    "immediately",
    is_flag=True,
    help="End it now; the unused part of the period is credited pro rata.",
)
@url_option
@json_option
def cancel(subscription_id: str, immediately: bool, url: str, as_json: bool) -> None:
    """Cancel a subscription: it ends at the end of the current period (forecasts stay
    readable until then; `foretell resume` undoes it), or now with --now.

    \b
    Examples:
      foretell cancel 0b7c...
      foretell cancel 0b7c... --now
    """
    request = pb.CancelSubscriptionRequest(id=subscription_id, immediately=immediately)
    with connect(url) as client:
        sub = client.unary(client.subscription.CancelSubscription, request).subscription
    if as_json:
        echo_json({"subscription": message_dict(sub)})
    else:
        click.echo(_sub_line(sub))


@click.command(short_help="Undo a cancellation at period end.")
@click.argument("subscription_id")
@url_option
@json_option
def resume(subscription_id: str, url: str, as_json: bool) -> None:
    """Undo a cancellation before the period ends.

    \b
    Example:
      foretell resume 0b7c...
    """
    request = pb.ResumeSubscriptionRequest(id=subscription_id)
    with connect(url) as client:
        sub = client.unary(client.subscription.ResumeSubscription, request).subscription
    if as_json:
        echo_json({"subscription": message_dict(sub)})
    else:
        click.echo(_sub_line(sub))


@click.command(short_help="List your invoices.")
@click.option("--subscription", "subscription_id", default="", help="Only this subscription's.")
@url_option
@json_option
def invoices(subscription_id: str, url: str, as_json: bool) -> None:
    """List your invoices, newest first.

    \b
    Example:
      foretell invoices
    """
    request = pb.ListInvoicesRequest(subscription_id=subscription_id)
    with connect(url) as client:
        listed = [
            invoice
            for page in pages(client, client.subscription.ListInvoices, request, _invoice_count)
            for invoice in page.invoices
        ]
    if as_json:
        echo_json({"invoices": [message_dict(i) for i in listed]})
        return
    echo_table(
        ("ID", "MODEL", "AMOUNT", "DUE", "STATE", "PERIOD"),
        [
            (
                i.id,
                i.model,
                format_minor(i.amount_minor, i.currency),
                short_time(i.due_time),
                enum_label(pb.InvoiceState.Name(i.state), "INVOICE_STATE_"),
                f"{short_time(i.period_start_time)[:10]} to {short_time(i.period_end_time)[:10]}",
            )
            for i in listed
        ],
    )
    for i in listed:
        for note in i.credit_notes:
            click.echo(
                f"{i.id}: credited {format_minor(note.amount_minor, i.currency)}: {note.reason}"
            )
