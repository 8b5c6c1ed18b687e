"""The `abuseguard` command. Each subcommand lives in its own module and registers itself."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# module path -> each module exposes register(subparsers) which sets `func` on its parser.
SUBCOMMAND_MODULES: tuple[str, ...] = (
    "abuseguard.intel.lookup_cmd",
    "abuseguard.replay_cmd",
    "abuseguard.sim.cmd",
    "abuseguard.warmup_cmd",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="abuseguard",
        description=(
            "Inspect networks, simulate traffic, replay traces through the guard and "
            "warm the kernel cache."
        ),
    )
    parser.add_argument("--version", action="version", version=f"abuseguard {_version()}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name in SUBCOMMAND_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name == module_name:
                continue
            raise
        module.register(subparsers)
    return parser


def _version() -> str:
    from abuseguard import __version__

    return __version__


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 2
    try:
        return int(func(args) or 0)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
