"""The subscriber commands through Envoy: plan, subscribe, subscriptions, cancel, resume,
invoices."""

from __future__ import annotations

import json
from pathlib import Path

from foretell.account.v1 import account_service_pb2 as account_pb
from foretell.cli._exit import Exit
from foretell.registry.v1 import registry_service_pb2_grpc as reg_grpc
from foretell.runtime import Resources
from tests._envoy import Envoy
from tests._records import make_model
from tests.conftest import SignUp
from tests.test_cli import _fails, _login, _ok, _run


async def test_plan_subscribe_cancel_resume_invoices(
    envoy: Envoy,
    channel: object,
    sign_up: SignUp,
    resources: Resources,
    tmp_path: Path,
) -> None:
    from grpc import aio

    assert isinstance(channel, aio.Channel)
    registry = reg_grpc.RegistryServiceStub(channel)
    model = await make_model(registry, sign_up, resources, public=True)
    url = envoy.base_url
    provider_dir, reader_dir = tmp_path / "provider", tmp_path / "reader"
    await _login(provider_dir, url, model.owner)
    reader = await sign_up(account_pb.ROLE_SUBSCRIBER)
    await _login(reader_dir, url, reader)

    _fails(await _run(reader_dir, url, "subscribe", model.name), Exit.CONFLICT)  # no plan yet
    bad = _fails(
        await _run(provider_dir, url, "plan", model.name, "--price", "49.001", "--trial-days", "0"),
        Exit.USAGE,
    )
    assert "2 decimals" in bad.stderr
    _fails(
        await _run(provider_dir, url, "plan", model.name, "--price", "1", "--trial-days", "31"),
        Exit.USAGE,
    )
    set_plan = _ok(
        await _run(provider_dir, url, "plan", model.name, "--price", "49.00", "--trial-days", "0")
    )
    assert "49.00 USD a month, no trial" in set_plan.stdout

    started = json.loads(_ok(await _run(reader_dir, url, "subscribe", model.name, "--json")).stdout)
    sub_id = started["subscription"]["id"]
    assert started["subscription"]["state"] == "SUBSCRIPTION_STATE_INCOMPLETE"
    assert started["invoice"]["amountMinor"] == "4900"
    listed = _ok(await _run(reader_dir, url, "subscriptions"))
    assert sub_id in listed.stdout and "incomplete" in listed.stdout
    bills = _ok(await _run(reader_dir, url, "invoices"))
    assert "49.00 USD" in bills.stdout and "open" in bills.stdout
    _fails(await _run(reader_dir, url, "resume", sub_id), Exit.CONFLICT)  # nothing to undo
    _fails(await _run(reader_dir, url, "cancel", "not-an-id"), Exit.USAGE)
    ended = json.loads(_ok(await _run(reader_dir, url, "cancel", sub_id, "--json")).stdout)
    assert ended["subscription"]["state"] == "SUBSCRIPTION_STATE_CANCELED"
    voided = json.loads(_ok(await _run(reader_dir, url, "invoices", "--json")).stdout)
    assert [i["state"] for i in voided["invoices"]] == ["INVOICE_STATE_VOID"]
    (credit,) = voided["invoices"][0]["creditNotes"]
    assert credit["reason"] == "canceled before the first payment"
    credited = _ok(await _run(reader_dir, url, "invoices"))
    assert "credited 49.00 USD: canceled before the first payment" in credited.stdout
