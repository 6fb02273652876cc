"""Sign-in commands: login, logout, whoami."""

from __future__ import annotations

import contextlib
import sys

import click
import grpc

from foretell.account.v1 import account_service_pb2 as account_pb
from foretell.cli._client import CALL_TIMEOUT_S, Client, connect
from foretell.cli._credentials import (
    Credentials,
    delete_credentials,
    load_credentials,
    save_credentials,
)
from foretell.cli._output import echo_json, enum_label, json_option, message_dict
from foretell.cli._target import url_option

# What Logout answers for a token that is already spent, revoked or expired: nothing to undo.
_GONE = (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.INVALID_ARGUMENT)


def _describe(user: account_pb.User) -> str:
    role = enum_label(account_pb.Role.Name(user.role), "ROLE_")
    return f"{user.email} ({user.display_name}, {role})"


def _revoke(client: Client, credentials: Credentials) -> None:
    try:
        client.account.Logout(
            account_pb.LogoutRequest(refresh_token=credentials.refresh_token),
            timeout=CALL_TIMEOUT_S,
        )
    except grpc.RpcError as error:
        if error.code() not in _GONE:
            raise


@click.command()
@url_option
@click.option("--email", metavar="EMAIL", help="Account email; prompted for when not given.")
@click.option(
    "--password-stdin",
    is_flag=True,
    help="Read the password from the first line of stdin instead of prompting (needs --email).",
)
@json_option
def login(url: str, email: str | None, password_stdin: bool, as_json: bool) -> None:
    """Sign in and keep the session for the other commands.

    The session is stored per URL in credentials.json, readable only by you, under the
    user config directory (FORETELL_CONFIG_DIR overrides it). Access tokens are refreshed
    automatically; the session lasts until `foretell logout` or the refresh token expires.

    \b
    Examples:
      foretell login
      foretell login --url https://foretell.example.com
      printf '%s\\n' "$PASSWORD" | foretell login --email ada@example.com --password-stdin
    """
    with connect(url) as client:
        if password_stdin:
            if not email:
                raise click.UsageError("--password-stdin needs --email")
            password = sys.stdin.readline().rstrip("\r\n")
        else:
            email = email or click.prompt("Email")
            password = click.prompt("Password", hide_input=True)
        response = client.account.Login(
            account_pb.LoginRequest(email=email, password=password), timeout=CALL_TIMEOUT_S
        )
        previous = load_credentials(client.target.url)
        save_credentials(
            Credentials.from_tokens(client.target.url, response.user.email, response.tokens)
        )
        if previous is not None:
            # End the session this login replaces rather than leave it valid for a month.
            with contextlib.suppress(grpc.RpcError):
                _revoke(client, previous)
    if as_json:
        echo_json({"url": client.target.url, "user": message_dict(response.user)})
    else:
        click.echo(f"signed in to {client.target.url} as {_describe(response.user)}")


@click.command()
@url_option
@json_option
def logout(url: str, as_json: bool) -> None:
    """End the session on the server and forget the stored credentials for this URL.

    \b
    Examples:
      foretell logout
      foretell logout --url https://foretell.example.com
    """
    with connect(url) as client:
        credentials = load_credentials(client.target.url)
        if credentials is not None:
            try:
                _revoke(client, credentials)
            except grpc.RpcError:
                # A sign-out must not leave tokens behind, even when the server cannot be told.
                delete_credentials(client.target.url)
                click.echo(
                    "warning: removed the stored credentials, but could not end the session "
                    "on the server",
                    err=True,
                )
                raise
            delete_credentials(client.target.url)
    if as_json:
        echo_json({"url": client.target.url, "signedOut": credentials is not None})
    elif credentials is None:
        click.echo(f"not signed in to {client.target.url}", err=True)
    else:
        click.echo(f"signed out of {client.target.url}")


@click.command()
@url_option
@json_option
def whoami(url: str, as_json: bool) -> None:
    """Show the signed-in user.

    \b
    Examples:
      foretell whoami
      foretell whoami --json
    """
    with connect(url) as client:
        user = client.unary(client.account.GetMe, account_pb.GetMeRequest()).user
    if as_json:
        echo_json({"url": client.target.url, "user": message_dict(user)})
        return
    rows = [
        ("email", user.email),
        ("name", user.display_name),
        ("role", enum_label(account_pb.Role.Name(user.role), "ROLE_")),
        ("id", user.id),
        ("url", client.target.url),
    ]
    for label, value in rows:
        click.echo(f"{label + ':':7}{value}")
