"""Notices to account owners go out through the operator's SMTP server: a local one here."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from email import message_from_bytes
from email.message import Message

import pytest

from foretell import outbox
from foretell.account.v1 import account_service_pb2 as pb
from foretell.account.v1 import account_service_pb2_grpc as pb_grpc
from foretell.runtime import Resources
from tests.conftest import PASSWORD, unique_email


@dataclasses.dataclass
class SmtpSink:
    """A minimal SMTP server that keeps every message it is given."""

    port: int = 0
    messages: list[tuple[list[str], Message]] = dataclasses.field(default_factory=list)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 sink ESMTP\r\n")
        recipients: list[str] = []
        while line := await reader.readline():
            command = line.decode().strip()
            verb = command[:4].upper()
            if verb == "RCPT":
                recipients.append(command.split(":", 1)[1].strip().strip("<>"))
            elif verb == "DATA":
                writer.write(b"354 end with .\r\n")
                data = await reader.readuntil(b"\r\n.\r\n")
                self.messages.append((recipients, message_from_bytes(data[:-5])))
                recipients = []
            elif verb == "QUIT":
                writer.write(b"221 bye\r\n")
                await writer.drain()
                break
            writer.write(b"250 ok\r\n")
            await writer.drain()
        writer.close()


@pytest.fixture
async def smtp() -> AsyncIterator[SmtpSink]:
    sink = SmtpSink()
    server = await asyncio.start_server(sink.handle, "127.0.0.1", 0)
    sink.port = server.sockets[0].getsockname()[1]
    async with server:
        yield sink


async def test_the_owner_hears_of_a_sign_up_with_their_address(
    account: pb_grpc.AccountServiceAsyncStub, resources: Resources, smtp: SmtpSink
) -> None:
    email = unique_email("owner")
    request = pb.CreateUserRequest(
        email=email, password=PASSWORD, display_name="Owner", role=pb.ROLE_SUBSCRIBER
    )
    await account.CreateUser(request)
    request.password = PASSWORD + " again"
    await account.CreateUser(request)

    settings = dataclasses.replace(
        resources.settings, smtp_url=f"smtp://127.0.0.1:{smtp.port}", smtp_from="ops@example.org"
    )
    assert await outbox.deliver(resources.db, settings, resources.clock()) >= 1
    mine = [message for recipients, message in smtp.messages if recipients == [email]]
    assert len(mine) == 1
    assert mine[0]["From"] == "ops@example.org"
    assert "sign up" in mine[0]["Subject"].lower() or "account" in mine[0]["Subject"].lower()
    # Sent once: a second delivery finds nothing to send.
    assert await outbox.deliver(resources.db, settings, resources.clock()) == 0


async def test_without_an_smtp_server_notices_wait(resources: Resources) -> None:
    assert resources.settings.smtp_url is None
    assert await outbox.deliver(resources.db, resources.settings, resources.clock()) == 0
