"""Regenerates gen/ from protos/: Python stubs, type stubs, the Envoy descriptor set and the
OpenAPI document of the REST API (`foretell._openapi`).

Run as `python -m foretell._gen OUT_DIR` (`make gen`). Third-party protos are read from the
installed googleapis-common-protos and grpcio-tools packages, never copied into the repository.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import google.api
from google.protobuf import descriptor_pb2
from grpc_tools import protoc

from foretell._openapi import build_openapi, render

_ROOT = Path(__file__).resolve().parents[2]
_PROTOS = _ROOT / "protos"
# Envoy's transcoder needs error_details in the set to render google.rpc.Status details as JSON.
_EXTRA_DESCRIPTORS = ("google/rpc/error_details.proto", "google/rpc/status.proto")


def _include_dirs() -> list[str]:
    googleapis = Path(next(iter(google.api.__path__))).parent.parent
    wkt = Path(protoc.__file__).parent / "_proto"
    return [str(_PROTOS), str(googleapis), str(wkt)]


def _protoc(args: list[str]) -> None:
    argv = ["protoc", *(f"-I{d}" for d in _include_dirs()), *args]
    if protoc.main(argv) != 0:
        raise SystemExit(f"protoc failed: {' '.join(args)}")


def generate(out: Path) -> None:
    protos = sorted(str(p.relative_to(_PROTOS)) for p in _PROTOS.rglob("*.proto"))
    python_out = out / "python"
    python_out.mkdir(parents=True, exist_ok=True)
    # Type stubs come from mypy-protobuf: its _pb2_grpc.pyi types the stubs and servicers,
    # which grpc_tools' --pyi_out does not.
    bin_dir = Path(sys.executable).parent
    _protoc(
        [
            f"--plugin=protoc-gen-mypy={bin_dir / 'protoc-gen-mypy'}",
            f"--plugin=protoc-gen-mypy_grpc={bin_dir / 'protoc-gen-mypy_grpc'}",
            f"--python_out={python_out}",
            f"--mypy_out={python_out}",
            f"--grpc_python_out={python_out}",
            f"--mypy_grpc_out={python_out}",
            *protos,
        ]
    )
    # Regular packages below the `foretell` namespace, so type checkers and setuptools see them.
    for package in (python_out / "foretell").rglob("*"):
        if package.is_dir() and package.name != "__pycache__":
            (package / "__init__.py").touch()
            (package / "py.typed").touch()
    descriptors = out / "descriptors"
    descriptors.mkdir(parents=True, exist_ok=True)
    _protoc(
        [
            "--include_imports",
            f"--descriptor_set_out={descriptors / 'foretell.binpb'}",
            *protos,
            *_EXTRA_DESCRIPTORS,
        ]
    )
    _openapi(out, descriptors / "foretell.binpb", protos)


def _openapi(out: Path, descriptor_set: Path, protos: list[str]) -> None:
    """gen/openapi/foretell.openapi.json from the descriptor set Envoy loads; the comments come
    from a second set with source info (kept out of Envoy's)."""
    files = descriptor_pb2.FileDescriptorSet.FromString(descriptor_set.read_bytes())
    with tempfile.TemporaryDirectory() as tmp:
        commented_path = Path(tmp) / "commented.binpb"
        _protoc(
            [
                "--include_imports",
                "--include_source_info",
                f"--descriptor_set_out={commented_path}",
                *protos,
                *_EXTRA_DESCRIPTORS,
            ]
        )
        commented = descriptor_pb2.FileDescriptorSet.FromString(commented_path.read_bytes())
    target = out / "openapi"
    target.mkdir(parents=True, exist_ok=True)
    (target / "foretell.openapi.json").write_text(render(build_openapi(files, commented)))


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit("usage: python -m foretell._gen OUT_DIR")
    generate(Path(sys.argv[1]))
