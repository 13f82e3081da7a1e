"""Helpers shared by the ``lorad`` commands (:mod:`.cli`, :mod:`.cli_reports`): the user-facing
error type, dtype names, progress bars, messages and the refusal to overwrite."""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


class CLIError(Exception):
    """A user-facing failure; the message is printed as is."""


def dtype_of(name: str):
    import torch

    return getattr(torch, DTYPES[name])


def progress(args: argparse.Namespace, desc: str) -> Callable[[Iterable], Iterable]:
    from tqdm.auto import tqdm

    def wrap(it: Iterable) -> Iterable:
        return tqdm(it, desc=desc, unit="tensor", disable=args.quiet, file=sys.stderr, leave=False)

    return wrap


def say(args: argparse.Namespace, msg: str) -> None:
    if not args.quiet:
        print(msg)


def refuse_existing(paths: Sequence[Path], force: bool) -> None:
    existing = [str(p) for p in paths if p.exists()]
    if existing and not force:
        raise FileExistsError(f"{', '.join(existing)}: already exists (pass --force to overwrite)")


def fmt(x: float) -> str:
    return f"{x:.3g}" if math.isfinite(x) else str(x)


def json_safe(obj):
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_safe(v) for v in obj]
    return obj
