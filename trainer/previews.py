"""Validation grids during training: teacher 1-step vs student 1-step (and its EMA), fixed seeds."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import torch

from .accel import RunAccelerator
from .adapters import ModelViews
from .backbones import Backbone, TextCond
from .ema import EMA
from .sampling import one_step, save_grid, seeded_noise
from .step import StepSettings


class PreviewRun(Protocol):
    """What a validation grid reads of a run (:class:`.distill.Distiller` is one)."""

    bb: Backbone
    views: ModelViews
    settings: StepSettings
    sample_cond: TextCond  # features of ``sample_prompts``, on the run's device
    sample_prompts: list[str]
    latent: tuple[int, int, int]
    acc: RunAccelerator  # its device and autocast
    ema: EMA | None
    step: int


@torch.no_grad()
def sample_grid(d: PreviewRun, path: Path) -> Path:
    """Write a grid for Distiller ``d``; the same prompts and seeds at every step."""
    bb, s = d.bb, d.settings
    cond = d.sample_cond
    noise = seeded_noise(range(len(cond)), d.latent).to(d.acc.device)
    rows, labels = [], []
    with d.acc.autocast():
        with d.views.teacher() as m:
            rows.append(bb.decode(one_step(bb, m, cond, noise, s.alpha_bar_T, s.timestep)))
            labels.append("teacher 1-step")
        with d.views.student_view() as m:
            rows.append(bb.decode(one_step(bb, m, cond, noise, s.alpha_bar_T, s.timestep)))
            labels.append(f"student step {d.step}")
            if d.ema is not None:
                with d.ema.applied():
                    rows.append(bb.decode(one_step(bb, m, cond, noise, s.alpha_bar_T, s.timestep)))
                labels.append("student EMA")
    return save_grid(rows, labels, path, captions=d.sample_prompts)
