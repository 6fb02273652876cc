"""Payment processors: how the platform asks for an invoice's money, and where payments are
recorded.

The built-in `ManualProcessor` is manual tracking: an invoice stays open until an admin records
the payment (`foretell admin invoices pay ID`); with FORETELL_BILLING_AUTO_PAY=on (development)
it records every invoice as paid as it is issued. A card processor plugs in by implementing
`PaymentProcessor` (its `charge` starts collection and returns None) and returning it from
`processor_for`; its webhook handler, once the processor confirms, calls `record_payment` with
its own name and reference: the same path the admin command takes.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Protocol

from foretell.settings import Settings


@dataclass(frozen=True)
class Charge:
    """What an issued invoice asks for."""

    invoice_id: uuid.UUID
    subscriber_id: uuid.UUID
    amount_minor: int
    currency: str
    description: str


@dataclass(frozen=True)
class Collected:
    """The money was taken at once; `reference` is the processor's id for it."""

    reference: str


class PaymentProcessor(Protocol):
    @property
    def name(self) -> str:
        """Recorded on each payment row ("manual", "stripe", ...): at most 32 characters."""
        ...

    async def charge(self, charge: Charge) -> Collected | None:
        """Asks for the money of a newly issued invoice, inside the transaction that issues it
        (so: quickly, no waiting on a network). Collected: paid now, recorded at once. None:
        pending; paid later through `record_payment` (an admin, or the processor's webhook)."""
        ...


@dataclass(frozen=True)
class ManualProcessor:
    """Manual tracking; `auto_pay` (development) marks every invoice paid on issue."""

    auto_pay: bool = False
    name: str = "manual"

    async def charge(self, charge: Charge) -> Collected | None:
        if self.auto_pay:
            return Collected(reference=f"auto-pay {charge.invoice_id}")
        return None


def processor_for(settings: Settings) -> PaymentProcessor:
    """The site's payment processor. The one place a card processor would be chosen."""
    return ManualProcessor(auto_pay=settings.billing_auto_pay == "on")
