"""The banner printed once everything answers: where each part listens, and what to try."""

from __future__ import annotations

from collections.abc import Sequence

from foretell.settings import Settings
from foretell.up._plan import ServiceProcess, client_address
from foretell.up._stores import Stores, safe_url


def banner(
    settings: Settings, plan: Sequence[ServiceProcess], stores: Stores, ready_s: float
) -> str:
    http = client_address(settings.http_addr)
    base = f"http://{http}"
    admin = client_address(settings.envoy_admin_addr)
    lines = [
        "",
        f"Foretell is up (ready in {ready_s:.1f} s).",
        "",
        f"  Web app                {base}/",
        f"  REST API reference     {base}/docs/api   (OpenAPI: {base}/openapi.json)",
        f"  REST, gRPC, gRPC-Web   {base}   (Envoy)",
        f"  Envoy admin            http://{admin}",
    ]
    for process in plan:
        label = "gRPC (direct)" if len(plan) == 1 else f"{process.name} (direct)"
        grpc_at = client_address(process.grpc_addr)
        metrics_at = client_address(process.metrics_addr)
        lines.append(f"  {label:<22} {grpc_at}   metrics http://{metrics_at}/metrics")
    db_note = (
        f"embedded, data in {stores.embedded_postgres}" if stores.embedded_postgres else "external"
    )
    redis_note = (
        f"embedded, data in {stores.embedded_redis}" if stores.embedded_redis else "external"
    )
    lines += [
        f"  PostgreSQL             {safe_url(stores.database_url)}   ({db_note})",
        f"  Redis                  {safe_url(stores.redis_url)}   ({redis_note})",
        f"  Data directory         {settings.data_dir}",
        "",
        "Try it:",
        f'  curl -s -X POST {base}/v1/users -d \'{{"email":"ada@example.com",'
        '"password":"correct horse battery","displayName":"Ada","role":"ROLE_PROVIDER"}\'',
        f'  TOKEN=$(curl -s -X POST {base}/v1/auth:login -d \'{{"email":"ada@example.com",'
        '"password":"correct horse battery"}\' | python3 -c '
        '\'import json,sys; print(json.load(sys.stdin)["tokens"]["accessToken"])\')',
        f'  curl -s {base}/v1/users/me -H "authorization: Bearer $TOKEN"',
        "",
        "From Python:",
        "  import grpc",
        "  from foretell.account.v1 import account_service_pb2 as pb",
        "  from foretell.account.v1 import account_service_pb2_grpc as rpc",
        f'  with grpc.insecure_channel("{http}") as channel:',
        "      reply = rpc.AccountServiceStub(channel).Login(",
        '          pb.LoginRequest(email="ada@example.com", password="correct horse battery"))',
        "      print(reply.user)",
        "",
        "Ctrl-C stops everything.",
        "",
    ]
    return "\n".join(lines) + "\n"
