"""`flexavatar` command line: one entry point, subcommands implemented next to what they drive.

    flexavatar export-engines ...   flexrt.export.cli
    flexavatar serve ...            flexrt.runtime.cli
    flexavatar stream ...           flexrt.runtime.cli
    flexavatar avatars ...          flexrt.runtime.cli
    flexavatar demo ...             flexrt.runtime.cli
    flexavatar bench ...            flexrt.benchmarks.cli
    flexavatar train ...            flexrt.training.cli
    flexavatar fit ...              flexrt.fitting.cli

Only the module of the chosen subcommand is imported (the others may pull in heavy or GPU-only packages).
"""
from __future__ import annotations

import argparse
import importlib
import sys

# subcommand -> (module providing `add_parser(subparsers)`, one-line help for the top-level listing)
SUBCOMMANDS = {
    "export-engines": ("flexrt.export.cli", "export encoder/decoder to ONNX (fp32, fp16) and TensorRT FP16"),
    "serve": ("flexrt.runtime.cli", "run the gRPC streaming server"),
    "stream": ("flexrt.runtime.cli", "stream a driving sequence to a server and write frames + latency"),
    "avatars": ("flexrt.runtime.cli", "create, list, show and delete avatars on a server"),
    "demo": ("flexrt.runtime.cli", "the main job: export, serve, create an avatar, stream, summarise latency"),
    "bench": ("flexrt.benchmarks.cli", "latency benchmarks (per stage and end to end)"),
    "train": ("flexrt.training.cli", "train the model with bias sinks on the procedural head corpus"),
    "fit": ("flexrt.fitting.cli", "fit an avatar code to tracked photos / video frames (decoder frozen)"),
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="flexavatar",
        description="FlexAvatar Runtime: export FLEX-1 engines, serve avatars over gRPC, stream, fit, train and benchmark.",
    )
    from flexrt import __version__

    parser.add_argument("--version", action="version", version=f"flexavatar {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    if command in SUBCOMMANDS:
        importlib.import_module(SUBCOMMANDS[command][0]).add_parser(sub)
    else:
        for name, (_, help_text) in SUBCOMMANDS.items():
            sub.add_parser(name, help=help_text)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(argv[0] if argv else None)
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
