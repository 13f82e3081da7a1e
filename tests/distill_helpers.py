"""Shared pieces of the distillation tests: tiny bases (built once per session), prompts, configs."""

from __future__ import annotations

import random
import sys
from pathlib import Path

import pytest
import torch
from tiny_models import WORDS, build_tiny
from wadi_lorad.trainer.config import DistillConfig, apply_overrides

ROOT = Path(__file__).resolve().parent.parent
_BASES: dict[tuple[str, int], Path] = {}


@pytest.fixture(scope="session", name="tiny_bases")
def tiny_bases_fixture(tmp_path_factory):
    """``get(kind, seed=0) -> folder``: tiny random-init diffusers folders, built once per session."""
    root = tmp_path_factory.mktemp("bases")

    def get(kind: str = "sd", seed: int = 0) -> Path:
        key = (kind, seed)
        if key not in _BASES:
            _BASES[key] = build_tiny(root / f"{kind}-{seed}", kind, seed)
        return _BASES[key]

    return get


def write_prompts(path: Path, n: int = 40, seed: int = 0) -> Path:
    rng = random.Random(seed)
    lines = [" ".join(rng.sample(WORDS, 4)) for _ in range(n)]
    path.write_text("\n".join(lines) + "\n")
    return path


def small_cfg(base: Path, prompts: Path, out: Path, **over) -> DistillConfig:
    """A seconds-long run: tiny ranks, batch 2, no samples/checkpoints unless asked."""
    pairs = {
        "model.base": str(base), "data.prompts": str(prompts), "output.dir": str(out),
        "data.cache_dir": str(out.parent / "text_cache"), "adapter.student_rank": "4", "adapter.fake_rank": "2",
        "train.batch_size": "2", "train.max_steps": "2", "output.sample_every": "0", "output.checkpoint_every": "0",
    }
    pairs.update({k.replace("__", "."): str(v) for k, v in over.items()})
    return apply_overrides(DistillConfig(), list(pairs.items()))


def cli(*args: str) -> list[str]:
    """Command line running this checkout's ``wadi`` (not an installed copy)."""
    return [sys.executable, str(ROOT), *args]


def student_tensors(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.named_parameters() if v.requires_grad}
