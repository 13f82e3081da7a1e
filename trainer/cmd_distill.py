"""``wadi distill --config run.yaml [--section.key value ...]``: WaDi one-step distillation.

:func:`config_command` and :func:`add_config_arguments` are the shared plumbing of every
config-driven command (``distill``, ``personalize``, ``relation``): YAML + overrides,
``--print-config`` / ``--save-config``, user errors as one line and exit code 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any


def user_errors() -> tuple[type[Exception], ...]:
    """Exceptions that mean bad input (printed as one clear line, exit code 2)."""
    from .backbones import BaseModelError
    from .checkpoint import OutputExistsError, ResumeError
    from .config import ConfigError
    from .prompts import PromptFileError

    return (ConfigError, PromptFileError, BaseModelError, ResumeError, OutputExistsError, FileExistsError)


def build_config(config_path: str | None, overrides: list[str], cls: type | None = None,
                 loader: Callable[[dict], Any] | None = None):
    """YAML (or defaults) + overrides, type-checked; cross-field checks come with ``validate``.

    ``cls``/``loader`` default to the distillation config and its ``from_dict``.
    """
    from .config import DistillConfig, apply_overrides, from_dict, load_yaml, parse_override_args

    cls, loader = cls or DistillConfig, loader or from_dict
    cfg = load_yaml(config_path, loader) if config_path else cls()
    return apply_overrides(cfg, parse_override_args(overrides))


def config_command(args: argparse.Namespace, cls: type, loader: Callable[[dict], Any],
                   train: Callable[[Any], dict], errors: tuple[type[Exception], ...]) -> int:
    """Build the config, then print/save it or ``train(cfg)`` and print the outputs."""
    from .config import save_yaml

    try:
        cfg = build_config(args.config, args.overrides, cls, loader)
        if args.print_config:
            import yaml

            from .config import to_dict

            print(yaml.safe_dump(to_dict(cfg), sort_keys=False), end="")
            return 0
        if args.save_config:
            save_yaml(cfg, args.save_config)
            print(f"wrote {args.save_config}")
            return 0
        outputs = train(cfg)
    except errors as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for k, p in outputs.items():
        print(f"{k}: {p}")
    return 0


def add_config_command(sub, name: str, *, help: str, description: str, config: tuple[str, str],
                       runner: tuple[str, str], errors: Callable[[], tuple[type[Exception], ...]]
                       ) -> argparse.ArgumentParser:
    """Register a config-driven command.

    ``config`` is ``(module, class)`` of its typed config (the module also has ``from_dict``),
    ``runner`` is ``(module, class)`` with ``Runner(cfg).run() -> {name: path}``; modules are
    relative to this package and imported only when the command runs (``wadi --help`` stays fast).
    """
    import importlib

    def run(args: argparse.Namespace) -> int:
        mod = importlib.import_module(config[0], __package__)

        def train(cfg):
            return getattr(importlib.import_module(runner[0], __package__), runner[1])(cfg).run()

        return config_command(args, getattr(mod, config[1]), mod.from_dict, train, errors())

    p = sub.add_parser(name, help=help, description=description)
    add_config_arguments(p, config[1])
    p.set_defaults(func=run, accepts_overrides=True)
    return p


def add_config_arguments(p: argparse.ArgumentParser, cls_name: str) -> None:
    p.add_argument("--config", help=f"YAML config (fields of {cls_name}; omitted fields keep their defaults)")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.add_argument("--save-config", metavar="YAML", help="write the resolved config to a file and exit")


def add_parser(sub) -> argparse.ArgumentParser:
    return add_config_command(
        sub, "distill",
        help="distill a base model into a one-step LoRaD student (WaDi)",
        description="WaDi distillation. Any config field can be overridden: --train.max_steps 100, "
        "--adapter.kind lora, --max_steps 100 (unique leaf names work without the section).",
        config=(".config", "DistillConfig"), runner=(".distill", "Distiller"), errors=user_errors,
    )
