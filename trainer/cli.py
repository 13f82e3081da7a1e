"""``wadi`` command line: one sub-command per module.

Each command module exposes ``add_parser(subparsers) -> argparse.ArgumentParser``
and sets ``func`` (a callable taking the parsed namespace and returning an exit
code) via ``parser.set_defaults``.  Heavy imports (diffusers, accelerate) stay
inside the command functions so ``wadi --help`` is instant.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# (module path relative to this package, ...) in the order shown by --help.
COMMAND_MODULES: tuple[str, ...] = (".cmd_demo", ".cmd_distill", ".cmd_personalize", ".cmd_relation", ".cmd_sample",
                                   ".pretrain", ".evaluate", ".tab.cli")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="wadi",
        description="WaDi one-step distillation with LoRaD adapters: train, sample, evaluate.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for mod in COMMAND_MODULES:
        importlib.import_module(mod, __package__).add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    # Commands driven by a typed config take free-form ``--section.key value`` overrides;
    # they set ``accepts_overrides`` and receive the rest in ``args.overrides``.
    args, extra = parser.parse_known_args(argv)
    if extra and not getattr(args, "accepts_overrides", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.overrides = extra
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 2
    try:
        return int(func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
