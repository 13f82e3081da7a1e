"""Atomic writes for the tiny world's checkpoints and exports (temp file + ``os.replace``)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch


def atomic_save(path: Path, writer: Callable[[Path], None]) -> Path:
    """Run ``writer(tmp)`` on a temp file next to ``path``, then move it over ``path``.

    A crash or a full disk mid-write leaves the previous ``path`` intact.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        writer(Path(tmp))
        os.chmod(tmp, 0o644)  # mkstemp makes owner-only files; outputs are ordinary files
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: Path, text: str) -> Path:
    return atomic_save(path, lambda p: p.write_text(text, encoding="utf-8"))


def atomic_torch_save(path: Path, obj: Any) -> Path:
    return atomic_save(path, lambda p: torch.save(obj, p))


def save_safetensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> Path:
    from safetensors.torch import save_file

    flat = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    return atomic_save(path, lambda p: save_file(flat, str(p), metadata=metadata))


def cast_safetensors_files(folder: Path, dtype: torch.dtype) -> list[Path]:
    """Rewrite every ``*.safetensors`` under ``folder`` with floating tensors in ``dtype``.

    Used to ship the teacher in fp16 (half the bytes); diffusers and transformers
    load such files into fp32 models by default, so callers see no difference.
    """
    from safetensors import safe_open

    done = []
    for path in sorted(Path(folder).rglob("*.safetensors")):
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata()
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open has no items()
        tensors = {k: v.to(dtype) if v.is_floating_point() else v for k, v in tensors.items()}
        save_safetensors(path, tensors, metadata=meta)
        done.append(path)
    return done
