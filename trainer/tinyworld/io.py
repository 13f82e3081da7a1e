"""Atomic writes for the tiny world's checkpoints and exports (on :mod:`lorad.fsutil`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ...lorad.fsutil import atomic_save


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
