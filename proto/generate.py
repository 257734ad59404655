"""Regenerate the committed stubs from flexavatar.proto.

    python -m flexrt.proto.generate            # rewrites proto/flexavatar_pb2{,_grpc}.py{,i} in place
    python -m flexrt.proto.generate --check    # exit 1 if the committed stubs differ from a fresh generation

Use grpcio-tools == PINNED_GRPCIO_TOOLS (see README.md: stubs from a newer grpcio-tools refuse to import under an
older grpcio runtime). The one post-processing step makes the _grpc module import its messages package-relative.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from importlib import metadata
from pathlib import Path

PROTO_DIR = Path(__file__).resolve().parent
PROTO_NAME = "flexavatar.proto"
GENERATED = ("flexavatar_pb2.py", "flexavatar_pb2.pyi", "flexavatar_pb2_grpc.py")
PINNED_GRPCIO_TOOLS = "1.84.0"

_ABSOLUTE_IMPORT = "import flexavatar_pb2 as flexavatar__pb2"
_RELATIVE_IMPORT = "from . import flexavatar_pb2 as flexavatar__pb2"


def grpcio_tools_version() -> str | None:
    try:
        return metadata.version("grpcio-tools")
    except metadata.PackageNotFoundError:
        return None


def generate(out_dir: Path, proto_dir: Path = PROTO_DIR) -> dict[str, bytes]:
    """Run protoc (grpcio-tools) on flexavatar.proto into ``out_dir``; returns {file name: bytes}."""
    from grpc_tools import protoc  # dev dependency

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    args = [
        "grpc_tools.protoc",
        f"-I{proto_dir}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        str(proto_dir / PROTO_NAME),
    ]
    rc = protoc.main(args)
    if rc != 0:
        raise RuntimeError(f"protoc failed with exit code {rc}: {' '.join(args)}")
    grpc_file = out_dir / "flexavatar_pb2_grpc.py"
    text = grpc_file.read_text()
    if _ABSOLUTE_IMPORT not in text:
        raise RuntimeError(f"unexpected grpc stub layout: {_ABSOLUTE_IMPORT!r} not found in {grpc_file}")
    grpc_file.write_text(text.replace(_ABSOLUTE_IMPORT, _RELATIVE_IMPORT, 1))
    return {name: (out_dir / name).read_bytes() for name in GENERATED}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="compare instead of writing")
    args = parser.parse_args(argv)
    version = grpcio_tools_version()
    if version != PINNED_GRPCIO_TOOLS:
        print(f"error: grpcio-tools=={PINNED_GRPCIO_TOOLS} is required, found {version}; "
              f"run: pip install grpcio-tools=={PINNED_GRPCIO_TOOLS}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        fresh = generate(Path(tmp))
    if args.check:
        stale = [n for n, data in fresh.items() if not (PROTO_DIR / n).is_file() or (PROTO_DIR / n).read_bytes() != data]
        for n in stale:
            print(f"stale: proto/{n}", file=sys.stderr)
        return 1 if stale else 0
    for name, data in fresh.items():
        (PROTO_DIR / name).write_bytes(data)
        print(f"wrote proto/{name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
