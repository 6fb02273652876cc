"""Provider commands for models and versions: init, create, push, models, versions, publish,
offline, visibility, logs."""

from __future__ import annotations

import contextlib
import re
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import click
import grpc
from google.protobuf import field_mask_pb2

from foretell.bundle import (
    MANIFEST_NAME,
    Manifest,
    PackedBundle,
    pack_dir,
    parse_manifest,
    printable,
)
from foretell.bundle import scaffold as _scaffold
from foretell.cli._client import Client, connect, pages
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
from foretell.common.v1 import common_pb2
from foretell.errors import ForetellError, InvalidArgument
from foretell.registry.v1 import registry_service_pb2 as pb
from foretell.resolutions import RESOLUTIONS, TO_ENUM

CHUNK_BYTES = 1024 * 1024  # the most UploadVersion accepts per message
# Generous for slow links; a stalled upload still ends.
UPLOAD_BASE_TIMEOUT_S = 60.0
UPLOAD_MIN_BYTES_PER_S = 256 * 1024
# A build log stream that breaks (gateway timeout, restart) is reopened; give up after this many
# attempts in a row that got nothing back.
LOG_RECONNECTS = 3

_TERMINAL = (pb.BUILD_STATE_READY, pb.BUILD_STATE_FAILED)
_RETRYABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")  # all but tab and newline

resolution_option = click.option(
    "--resolution", type=click.Choice(RESOLUTIONS), default="1h", show_default=True
)
horizon_option = click.option(
    "--horizon",
    type=click.IntRange(1, 1000),
    default=1,
    show_default=True,
    help="Bars ahead each forecast looks.",
)


def _bad_input(error: ForetellError, what: str = "model folder") -> CliError:
    if isinstance(error, InvalidArgument):
        lines = [f"  {v.field}: {v.description}" for v in error.violations]
        return CliError("\n".join([f"invalid {what}:", *lines]), Exit.USAGE)
    return CliError(error.message, Exit.USAGE)


def _folder_name(directory: Path) -> str:
    return _scaffold.slug(directory.resolve().name)


def _resolution(model: pb.Model) -> str:
    return enum_label(common_pb2.Resolution.Name(model.resolution), "RESOLUTION_")


def _visibility(model: pb.Model) -> str:
    return enum_label(pb.Visibility.Name(model.visibility), "VISIBILITY_")


def _state(version: pb.Version) -> str:
    return pb.BuildState.Name(version.build_state).removeprefix("BUILD_STATE_")


def _terminal_safe(text: str) -> str:
    # Build logs and failure reasons carry the provider's output (tracebacks, pip): escape
    # sequences in them must not drive the terminal of whoever reads them, an admin included.
    return _CONTROL.sub("?", text)


def _short(digest: str) -> str:
    return digest[: len("sha256:") + 12]


# --- init -------------------------------------------------------------------------------------


@click.command(short_help="Create a model folder from the template.")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--symbol",
    "symbols",
    multiple=True,
    default=("EURUSD",),
    show_default=True,
    help="A symbol to forecast; repeat for several.",
)
@resolution_option
@horizon_option
@click.option(
    "--lookback",
    type=click.IntRange(1, 10_000),
    default=48,
    show_default=True,
    help="Bars of history each run reads.",
)
@click.option("--name", help="Model name, if not the folder's name (then push with --model NAME).")
@click.option("--force", is_flag=True, help="Write into a folder that is not empty.")
@json_option
def init(
    directory: Path,
    symbols: tuple[str, ...],
    resolution: str,
    horizon: int,
    lookback: int,
    name: str | None,
    force: bool,
    as_json: bool,
) -> None:
    """Create a model folder that builds and runs as generated: model.py, foretell.toml,
    requirements.txt and a README.

    The model's name is the folder's name as a slug (`My Model` -> `my-model`); `push` uses
    the same rule, so pass --model to push when you choose another --name.

    \b
    Examples:
      foretell init eurusd-momentum
      foretell init fx-daily --symbol EURUSD --symbol GBPUSD --resolution 1d --horizon 5
    """
    model = name or _folder_name(directory)
    if not _scaffold.NAME_PATTERN.fullmatch(model):
        raise CliError(
            f"{model!r} is not a model name (3 to 40 of a-z, 0-9 and '-', starting with a "
            "letter): choose another folder or --name",
            Exit.USAGE,
        )
    if directory.exists() and any(directory.iterdir()) and not force:
        raise CliError(f"{directory} is not empty (use --force to write into it)", Exit.USAGE)
    try:
        manifest = Manifest(
            entrypoint="model:predict",
            symbols=tuple(s.upper() for s in symbols),
            resolution=resolution,
            horizon=horizon,
            lookback=lookback,
            requirements="requirements.txt",
        )
        written = _scaffold.write(
            directory, model, manifest, pushes_by_folder=model == _folder_name(directory)
        )
    except ForetellError as error:
        raise _bad_input(error, "model settings") from None
    except OSError as error:
        raise CliError(str(error)) from None
    if as_json:
        echo_json({"model": model, "files": [str(p) for p in written]})
        return
    click.echo(f"created model folder {directory} for model {model}:")
    for path in written:
        click.echo(f"  {path}")
    click.echo(f"next: edit model.py, then `cd {directory} && foretell push --create`")


# --- create -----------------------------------------------------------------------------------


def _model_line(model: pb.Model) -> str:
    details = [",".join(model.symbols), _resolution(model), f"horizon {model.horizon}"]
    return f"model {model.name}: {model.title} ({', '.join([*details, _visibility(model)])})"


@click.command(short_help="Create a model (before its first push).")
@click.argument("name")
@click.option("--title", required=True, help="Short title, 1 to 120 characters.")
@click.option(
    "--symbol", "symbols", multiple=True, required=True, help="A symbol; repeat for several."
)
@resolution_option
@horizon_option
@click.option("--description", default="", help="Longer description.")
@click.option("--tag", "tags", multiple=True, help="A tag; repeat for several.")
@click.option("--public", is_flag=True, help="List it in the catalog at once (default: private).")
@url_option
@json_option
def create(
    name: str,
    title: str,
    symbols: tuple[str, ...],
    resolution: str,
    horizon: int,
    description: str,
    tags: tuple[str, ...],
    public: bool,
    url: str,
    as_json: bool,
) -> None:
    """Create a model. Its name, symbols, resolution and horizon are permanent.

    \b
    Examples:
      foretell create eurusd-momentum --title "EURUSD momentum" --symbol EURUSD
      foretell create fx-daily --title "FX daily" --symbol EURUSD --symbol GBPUSD \\
          --resolution 1d --horizon 5 --tag fx --description "Daily FX direction"
    """
    model = pb.Model(
        name=name,
        title=title,
        description=description,
        symbols=[s.upper() for s in symbols],
        resolution=TO_ENUM[resolution],
        horizon=horizon,
        tags=list(tags),
        visibility=pb.VISIBILITY_PUBLIC if public else pb.VISIBILITY_PRIVATE,
    )
    with connect(url) as client:
        created = client.unary(
            client.registry.CreateModel, pb.CreateModelRequest(model=model)
        ).model
    if as_json:
        echo_json({"model": message_dict(created)})
    else:
        click.echo(f"created {_model_line(created)}")


# --- push -------------------------------------------------------------------------------------


def _read_manifest(directory: Path) -> Manifest:
    path = directory / MANIFEST_NAME
    try:
        return parse_manifest(path.read_bytes())
    except FileNotFoundError:
        raise CliError(
            f"no {MANIFEST_NAME} in {directory}: is it a model folder? (`foretell init` makes one)",
            Exit.USAGE,
        ) from None
    except ForetellError as error:
        raise _bad_input(error) from None


def _ensure_model(client: Client, name: str, manifest: Manifest, title: str) -> bool:
    """Creates the model from the manifest unless it exists; True if it created it."""
    try:
        client.unary(client.registry.GetModel, pb.GetModelRequest(name=name))
    except grpc.RpcError as error:
        if error.code() != grpc.StatusCode.NOT_FOUND:
            raise
    else:
        return False
    model = pb.Model(
        name=name,
        title=title,
        symbols=manifest.symbols,
        resolution=TO_ENUM[manifest.resolution],
        horizon=manifest.horizon,
        visibility=pb.VISIBILITY_PRIVATE,
    )
    client.unary(client.registry.CreateModel, pb.CreateModelRequest(model=model))
    return True


@contextlib.contextmanager
def _progress(size: int, show: bool) -> Iterator[Callable[[int], None]]:
    if not show:
        yield lambda _: None
        return
    with click.progressbar(length=size, label="uploading", file=sys.stderr) as bar:
        yield bar.update


def _upload(
    client: Client, name: str, bundle: PackedBundle, show: bool
) -> pb.UploadVersionResponse:
    timeout = UPLOAD_BASE_TIMEOUT_S + bundle.size / UPLOAD_MIN_BYTES_PER_S

    def send(metadata: tuple[tuple[str, str], ...]) -> pb.UploadVersionResponse:
        # gRPC reads the request iterator on its own thread; the bar follows what it has read.
        with _progress(bundle.size, show) as advance:

            def requests() -> Iterator[pb.UploadVersionRequest]:
                header = pb.UploadHeader(model=name, size=bundle.size, digest=bundle.digest)
                yield pb.UploadVersionRequest(header=header)
                for start in range(0, bundle.size, CHUNK_BYTES):
                    chunk = bundle.data[start : start + CHUNK_BYTES]
                    yield pb.UploadVersionRequest(chunk=chunk)
                    advance(len(chunk))

            response: pb.UploadVersionResponse = client.registry.UploadVersion(
                requests(), metadata=metadata, timeout=timeout
            )
            return response

    try:
        return client.call(send)
    except grpc.RpcError as error:
        if error.code() == grpc.StatusCode.NOT_FOUND:
            raise CliError(
                f"model {name} does not exist: create it with `foretell create {name} ...`, "
                "or push with --create to create it from foretell.toml",
                Exit.NOT_FOUND,
            ) from None
        raise


def follow_build(
    client: Client, model: str, number: int, emit: Callable[[str], None]
) -> pb.StreamBuildLogResponse:
    """Emits the build log's lines as they arrive; returns the last message (the final state).

    The stream may break before the build ends (a gateway's route timeout, a restart): it is
    reopened, and since the server starts again from the first line, the lines already
    emitted are skipped.
    """
    request = pb.StreamBuildLogRequest(model=model, number=number)
    emitted = 0
    fruitless = 0
    while True:
        last: pb.StreamBuildLogResponse | None = None
        seen = 0
        try:
            for message in client.stream(client.registry.StreamBuildLog, request):
                for line in message.lines:
                    seen += 1
                    if seen > emitted:
                        emit(line)
                        emitted = seen
                last = message
        except grpc.RpcError as error:
            if error.code() not in _RETRYABLE:
                raise
            broken: grpc.RpcError | None = error
        else:
            broken = None
        if last is not None and last.build_state in _TERMINAL:
            return last
        fruitless = 0 if last is not None else fruitless + 1
        if fruitless > LOG_RECONNECTS:
            if broken is not None:
                raise broken
            raise CliError(f"the build log of {model} version {number} ended before the build")
        time.sleep(1.0)


def _summary(version: pb.Version) -> str:
    line = f"model {version.model} version {version.number}  {version.digest}  {_state(version)}"
    if version.build_state == pb.BUILD_STATE_FAILED:
        line += f": {_terminal_safe(version.failure_reason)}"
    return line


@click.command()
@click.argument(
    "directory", default=".", type=click.Path(exists=True, file_okay=False, path_type=Path)
)
@click.option(
    "--model", "model_name", metavar="NAME", help="Model to push to; default: the folder's name."
)
@click.option("--create", "create_model", is_flag=True, help="Create the model first if missing.")
@click.option("--title", help="Title when --create creates the model; default: its name.")
@click.option(
    "--wait/--no-wait", default=True, show_default=True, help="Follow the build to its end."
)
@url_option
@json_option
def push(
    directory: Path,
    model_name: str | None,
    create_model: bool,
    title: str | None,
    wait: bool,
    url: str,
    as_json: bool,
) -> None:
    """Upload a model folder as a new version and follow its build.

    Packs DIRECTORY (default: the current folder) the same way every time, so unchanged code
    gives the same digest and no new version. The model is the folder's name as a slug
    unless --model says otherwise; --create creates it from foretell.toml if it does not exist
    yet (private, titled --title).

    \b
    Examples:
      foretell push
      foretell push ./eurusd-momentum --create --title "EURUSD momentum"
      foretell push --model eurusd-momentum --no-wait --json
    """
    if title and not create_model:
        raise click.UsageError("--title goes with --create")
    name = model_name or _folder_name(directory)
    manifest = _read_manifest(directory)
    try:
        bundle = pack_dir(directory)
    except ForetellError as error:
        raise _bad_input(error) from None

    def out(text: str) -> None:
        # With --json, stdout carries the JSON document alone; progress goes to stderr.
        click.echo(_terminal_safe(text), err=as_json)

    if bundle.skipped:
        out("skipped " + ", ".join(printable(path) for path in bundle.skipped))
    with connect(url) as client:
        model_created = create_model and _ensure_model(client, name, manifest, title or name)
        if model_created:
            out(f"created model {name} (private)")
        show_progress = not as_json and sys.stderr.isatty()
        response = _upload(client, name, bundle, show_progress)
        version = response.version
        if not response.created:
            out(f"unchanged: same content as version {version.number}")
        if wait and version.build_state not in _TERMINAL:
            follow_build(client, name, version.number, out)
            request = pb.GetVersionRequest(model=name, number=version.number)
            version = client.unary(client.registry.GetVersion, request).version
    if as_json:
        echo_json(
            {
                "version": message_dict(version),
                "created": response.created,
                "modelCreated": model_created,
            }
        )
    else:
        click.echo(_summary(version))
    if version.build_state == pb.BUILD_STATE_FAILED:
        reason = _terminal_safe(version.failure_reason)
        raise CliError(f"build failed: {reason}", Exit.BUILD_FAILED)


# --- listing ----------------------------------------------------------------------------------


@click.command()
@click.option("--mine", is_flag=True, help="Only your own models.")
@click.option("--symbol", help="Only models forecasting this symbol.")
@click.option("--tag", help="Only models with this tag.")
@click.option("--resolution", type=click.Choice(RESOLUTIONS), help="Only this resolution.")
@url_option
@json_option
def models(
    mine: bool,
    symbol: str | None,
    tag: str | None,
    resolution: str | None,
    url: str,
    as_json: bool,
) -> None:
    """List the public catalog and your own models.

    \b
    Examples:
      foretell models --mine
      foretell models --symbol EURUSD --tag fx --json
    """
    request = pb.ListModelsRequest(
        symbol=(symbol or "").upper(),
        tag=tag or "",
        resolution=TO_ENUM[resolution] if resolution else common_pb2.RESOLUTION_UNSPECIFIED,
        only_mine=mine,
    )
    with connect(url) as client:
        listed = pages(client, client.registry.ListModels, request, lambda p: len(p.models))
        found = [m for page in listed for m in page.models]
    if as_json:
        echo_json(message_dict(pb.ListModelsResponse(models=found)) or {"models": []})
        return
    echo_table(
        ("NAME", "TITLE", "SYMBOLS", "RES", "HORIZON", "VISIBILITY", "LIVE", "OWNER"),
        [
            (
                m.name,
                m.title,
                ",".join(m.symbols),
                _resolution(m),
                m.horizon,
                _visibility(m),
                f"v{m.live_version}" if m.live_version else "-",
                m.owner_display_name,
            )
            for m in found
        ],
    )


@click.command()
@click.argument("model")
@url_option
@json_option
def versions(model: str, url: str, as_json: bool) -> None:
    """List a model's versions, newest first.

    \b
    Examples:
      foretell versions eurusd-momentum
      foretell versions eurusd-momentum --json
    """
    request = pb.ListVersionsRequest(model=model)
    with connect(url) as client:
        listed = pages(client, client.registry.ListVersions, request, lambda p: len(p.versions))
        found = [v for page in listed for v in page.versions]
    if as_json:
        echo_json(message_dict(pb.ListVersionsResponse(versions=found)) or {"versions": []})
        return
    echo_table(
        ("VERSION", "DIGEST", "STATE", "LIVE", "CREATED"),
        [
            (
                v.number,
                _short(v.digest),
                _state(v),
                "live" if v.live else "",
                short_time(v.create_time),
            )
            for v in found
        ],
    )


# --- lifecycle --------------------------------------------------------------------------------


@click.command()
@click.argument("model")
@click.argument("version", type=click.IntRange(min=1))
@url_option
@json_option
def publish(model: str, version: int, url: str, as_json: bool) -> None:
    """Make a READY version the model's live version; the platform starts running it.

    The previous live version is retired; its record stays.

    \b
    Example:
      foretell publish eurusd-momentum 3
    """
    with connect(url) as client:
        request = pb.PublishVersionRequest(model=model, number=version)
        response = client.unary(client.registry.PublishVersion, request)
    if as_json:
        echo_json(message_dict(response))
    else:
        click.echo(f"model {model}: version {response.version.number} is live")


@click.command()
@click.argument("model")
@url_option
@json_option
def offline(model: str, url: str, as_json: bool) -> None:
    """Take a model offline: no live version, no more runs. Every record stays, and a version
    can be published again later.

    \b
    Example:
      foretell offline eurusd-momentum
    """
    with connect(url) as client:
        response = client.unary(client.registry.TakeOffline, pb.TakeOfflineRequest(name=model))
    if as_json:
        echo_json(message_dict(response))
    else:
        click.echo(f"model {model} is offline")


@click.command()
@click.argument("model")
@click.argument("visibility", type=click.Choice(["public", "private"]))
@url_option
@json_option
def visibility(model: str, visibility: str, url: str, as_json: bool) -> None:
    """Show a model in the catalog (public) or only to you (private).

    \b
    Examples:
      foretell visibility eurusd-momentum public
      foretell visibility eurusd-momentum private
    """
    value = pb.VISIBILITY_PUBLIC if visibility == "public" else pb.VISIBILITY_PRIVATE
    request = pb.UpdateModelRequest(
        model=pb.Model(name=model, visibility=value),
        update_mask=field_mask_pb2.FieldMask(paths=["visibility"]),
    )
    with connect(url) as client:
        updated = client.unary(client.registry.UpdateModel, request).model
    if as_json:
        echo_json({"model": message_dict(updated)})
    else:
        click.echo(f"model {model} is {visibility}")


@click.command()
@click.argument("model")
@click.argument("version", type=click.IntRange(min=1))
@url_option
@json_option
def logs(model: str, version: int, url: str, as_json: bool) -> None:
    """Print a version's build log; while it builds, follow it to the end.

    \b
    Examples:
      foretell logs eurusd-momentum 3
      foretell logs eurusd-momentum 3 --json
    """
    lines: list[str] = []

    def emit(line: str) -> None:
        if as_json:
            lines.append(line)
        else:
            click.echo(_terminal_safe(line))

    with connect(url) as client:
        last = follow_build(client, model, version, emit)
    state = pb.BuildState.Name(last.build_state)
    if as_json:
        echo_json({"lines": lines, "buildState": state, "failureReason": last.failure_reason})
    else:
        reason = f": {_terminal_safe(last.failure_reason)}" if last.failure_reason else ""
        click.echo(f"build {state.removeprefix('BUILD_STATE_')}{reason}", err=True)
