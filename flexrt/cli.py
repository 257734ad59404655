"""`flexavatar` command line: one entry point, subcommands implemented next to what they drive.

    flexavatar export-engines ...   flexrt.export.cli
    flexavatar serve ...            flexrt.runtime.cli
    flexavatar stream ...           flexrt.runtime.cli
    flexavatar demo ...             flexrt.runtime.cli
    flexavatar bench ...            flexrt.benchmarks.cli
"""
from __future__ import annotations

import argparse
import importlib
import sys

# subcommand -> module that provides `add_parser(subparsers)`; the parser sets `func(args) -> int`.
_SUBCOMMAND_MODULES = {
    "export-engines": "flexrt.export.cli",
    "serve": "flexrt.runtime.cli",
    "stream": "flexrt.runtime.cli",
    "demo": "flexrt.runtime.cli",
    "bench": "flexrt.benchmarks.cli",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="flexavatar",
        description="FlexAvatar Runtime: export FLEX-1 engines, serve avatars over gRPC, stream and benchmark.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    added = set()
    for module_name in dict.fromkeys(_SUBCOMMAND_MODULES.values()):
        module = importlib.import_module(module_name)
        module.add_parser(sub)
        added.add(module_name)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
