"""``wadi distill --config run.yaml [--section.key value ...]``: WaDi one-step distillation."""

from __future__ import annotations

import argparse
import sys


def user_errors() -> tuple[type[Exception], ...]:
    """Exceptions that mean bad input (printed as one clear line, exit code 2)."""
    from .backbones import BaseModelError
    from .checkpoint import ResumeError
    from .config import ConfigError
    from .distill import OutputExistsError
    from .prompts import PromptFileError

    return (ConfigError, PromptFileError, BaseModelError, ResumeError, OutputExistsError, FileExistsError)


def build_config(config_path: str | None, overrides: list[str]):
    """YAML (or defaults) + overrides, type-checked; cross-field checks come with ``validate``."""
    from .config import DistillConfig, apply_overrides, load_yaml, parse_override_args

    cfg = load_yaml(config_path) if config_path else DistillConfig()
    return apply_overrides(cfg, parse_override_args(overrides))


def run(args: argparse.Namespace) -> int:
    from .config import save_yaml

    errors = user_errors()
    try:
        cfg = build_config(args.config, args.overrides)
        if args.print_config:
            import yaml

            from .config import to_dict

            print(yaml.safe_dump(to_dict(cfg), sort_keys=False), end="")
            return 0
        if args.save_config:
            save_yaml(cfg, args.save_config)
            print(f"wrote {args.save_config}")
            return 0
        from .distill import Distiller

        d = Distiller(cfg)
        outputs = d.run()
    except errors as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for k, p in outputs.items():
        print(f"{k}: {p}")
    return 0


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "distill",
        help="distill a base model into a one-step LoRaD student (WaDi)",
        description="WaDi distillation. Any config field can be overridden: --train.max_steps 100, "
        "--adapter.kind lora, --max_steps 100 (unique leaf names work without the section).",
    )
    p.add_argument("--config", help="YAML config (fields of DistillConfig; omitted fields keep their defaults)")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.add_argument("--save-config", metavar="YAML", help="write the resolved config to a file and exit")
    p.set_defaults(func=run, accepts_overrides=True)
    return p
