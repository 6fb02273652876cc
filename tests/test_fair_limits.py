"""The expensive calls (performance, ledger, dry run, upload) are rate limited by Envoy per
client address and per bearer token, under a ceiling for all: one client that spends its
share is refused (429 over REST, RESOURCE_EXHAUSTED over gRPC) while others go on."""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import grpc
import httpx
import pytest
from grpc import aio

from foretell.composition import SERVICES
from foretell.forecast.v1 import forecast_service_pb2 as fc_pb
from foretell.forecast.v1 import forecast_service_pb2_grpc as fc_grpc
from foretell.registry.v1 import registry_service_pb2_grpc as reg_grpc
from foretell.runtime import Resources, RunningServer
from foretell.settings import Address, Settings
from tests import _envoy
from tests._records import make_model
from tests._registry import upload_bytes
from tests.conftest import SignUp, status_code

PER_CLIENT = 3


def _limited(settings: Settings) -> Settings:
    return dataclasses.replace(
        settings,
        expensive_rate_limit_per_min=PER_CLIENT * 4,
        expensive_rate_limit_per_client_per_min=PER_CLIENT,
    )


def _client_at(base_url: str, address: str, token: str) -> httpx.AsyncClient:
    transport = httpx.AsyncHTTPTransport(local_address=address)
    headers = {"authorization": f"Bearer {token}"}
    return httpx.AsyncClient(base_url=base_url, transport=transport, headers=headers, timeout=10)


@pytest.mark.timeout(90)
async def test_one_rest_client_spending_its_share_leaves_others_theirs(
    settings: Settings,
    grpc_server: RunningServer,
    resources: Resources,
    channel: aio.Channel,
    sign_up: SignUp,
    tmp_root: Path,
) -> None:
    made = await make_model(reg_grpc.RegistryServiceStub(channel), sign_up, resources)
    flooder, honest = await sign_up(), await sign_up()
    upstreams = dict.fromkeys(SERVICES, Address("127.0.0.1", grpc_server.port))
    async with (
        _envoy.running_envoy(_limited(settings), upstreams, tmp_root / "envoy-fair-rest") as gw,
        _client_at(gw.base_url, "127.0.0.1", flooder.tokens.access_token) as flood,
        _client_at(gw.base_url, "127.0.0.4", flooder.tokens.access_token) as moved,
        _client_at(gw.base_url, "127.0.0.2", honest.tokens.access_token) as other,
    ):
        for path in (f"/v1/models/{made.name}/performance", f"/v1/models/{made.name}/ledger"):
            codes = [(await flood.get(path)).status_code for _ in range(PER_CLIENT + 2)]
            assert codes == [200] * PER_CLIENT + [429, 429], path
            refused = await flood.get(path)
            assert refused.json()["code"] == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
            # The same account from another address has spent its share too...
            assert (await moved.get(path)).status_code == 429
            # ...while another client, from another address, is served.
            assert (await other.get(path)).status_code == 200
        # A call that is not expensive is not counted.
        assert (await flood.get(f"/v1/models/{made.name}")).status_code == 200


@pytest.mark.timeout(90)
async def test_one_grpc_client_spending_its_share_leaves_others_theirs(
    settings: Settings,
    grpc_server: RunningServer,
    resources: Resources,
    channel: aio.Channel,
    sign_up: SignUp,
    tmp_root: Path,
) -> None:
    made = await make_model(reg_grpc.RegistryServiceStub(channel), sign_up, resources)
    flooder, honest = await sign_up(), await sign_up()
    upstreams = dict.fromkeys(SERVICES, Address("127.0.0.1", grpc_server.port))
    async with (
        _envoy.running_envoy(_limited(settings), upstreams, tmp_root / "envoy-fair-grpc") as gw,
        _envoy.relay_from("127.0.0.2", gw.port) as elsewhere,
        aio.insecure_channel(gw.grpc_target) as flood_channel,
        aio.insecure_channel(elsewhere) as other_channel,
    ):
        flood = fc_grpc.ForecastServiceStub(flood_channel)
        other = fc_grpc.ForecastServiceStub(other_channel)
        request = fc_pb.GetPerformanceRequest(model=made.name)
        for _ in range(PER_CLIENT):
            await flood.GetPerformance(request, metadata=flooder.metadata)
        with pytest.raises(grpc.RpcError) as caught:
            await flood.GetPerformance(request, metadata=flooder.metadata)
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        # Each expensive call has its own buckets: the flooder can still read a ledger.
        await flood.GetLedger(fc_pb.GetLedgerRequest(model=made.name), metadata=flooder.metadata)
        response = await other.GetPerformance(request, metadata=honest.metadata)
        assert response.model == made.name
        # A dry run is limited per client too; the flooder's gRPC address is spent first.
        dry = fc_pb.DryRunRequest(model=made.name)
        outcomes = []
        for _ in range(PER_CLIENT + 1):
            try:
                await flood.DryRun(dry, metadata=flooder.metadata)
                outcomes.append(grpc.StatusCode.OK)
            except grpc.RpcError as error:
                outcomes.append(error.code())
        assert outcomes[-1] == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert grpc.StatusCode.RESOURCE_EXHAUSTED not in outcomes[:PER_CLIENT]
        with pytest.raises(grpc.RpcError) as other_dry:
            await other.DryRun(dry, metadata=honest.metadata)
        assert other_dry.value.code() != grpc.StatusCode.RESOURCE_EXHAUSTED
        # Uploads too (a client stream: refused on its headers, before any bundle byte).
        flood_registry = reg_grpc.RegistryServiceStub(flood_channel)
        other_registry = reg_grpc.RegistryServiceStub(other_channel)
        codes = [
            await _upload_code(flood_registry, made.name, flooder.metadata)
            for _ in range(PER_CLIENT + 1)
        ]
        assert grpc.StatusCode.RESOURCE_EXHAUSTED not in codes[:PER_CLIENT]
        assert codes[-1] == grpc.StatusCode.RESOURCE_EXHAUSTED
        honest_code = await _upload_code(other_registry, made.name, honest.metadata)
        assert honest_code not in (grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.OK)


async def _upload_code(
    registry: reg_grpc.RegistryServiceAsyncStub, model: str, metadata: tuple[tuple[str, str]]
) -> grpc.StatusCode:
    """An upload of a bundle that is not one (refused by the service unless rate limited)."""
    data = b"not a bundle"
    digest = f"sha256:{hashlib.sha256(data).hexdigest()}"
    try:
        await upload_bytes(registry, metadata, model, data, digest)
    except grpc.RpcError as error:
        return status_code(error)
    return grpc.StatusCode.OK
