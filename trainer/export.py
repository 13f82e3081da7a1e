"""Run outputs: ``student.lorad.safetensors`` (+ fake), a merged diffusers folder, a single-file checkpoint.

``.lorad`` files are written by :func:`lorad.bridge.export_adapter` (format and key
spelling owned by ``lorad``).  The metadata records what inference needs to reproduce
the student (``wadi.timestep``, ``wadi.alpha_bar_T`` it was distilled with, the base's
prediction type) and the provenance of the run (``lorad.provenance.*``: steps,
learning rates, CFG, seed, base fingerprint, config hash).  With EMA on, every
export uses the EMA weights.
"""

from __future__ import annotations

import contextlib
import copy
import json
import shutil
from pathlib import Path
from typing import Protocol

import torch
from torch import nn

from ..lorad import inject
from ..lorad.fsutil import atomic_dir, atomic_save
from .adapters import ModelViews
from .backbones import Backbone
from .config import DistillConfig
from .ema import EMA
from .events import EventLog
from .singlefile import export_single_file
from .step import StepSettings

__all__ = ["TrainedRun", "arch_name", "run_metadata", "export_student", "merged_denoiser", "export_merged_folder",
           "export_outputs"]


class TrainedRun(Protocol):
    """What the exports read of a finished distillation run (:class:`.distill.Distiller` is one).

    Spelled out so an export cannot reach further into the run than this.
    """

    cfg: DistillConfig
    bb: Backbone
    views: ModelViews
    ema: EMA | None  # with EMA on, every export uses the averaged weights
    settings: StepSettings
    events: EventLog
    out: Path
    step: int
    global_batch: int  # per optimizer micro-step, all processes
    base_fp: str
    cfg_hash: str
    prompts: list[str]


def arch_name(bb: Backbone) -> str:
    """The ``lorad.archs`` id of a loaded base (key spelling; a shrunk UNet adds a layout to the file)."""
    if bb.kind == "sdxl":
        return "sdxl"
    if bb.kind == "pixart":
        return "pixart-alpha-512" if int(bb.denoiser.config.sample_size) == 64 else "pixart-alpha"
    if bool(getattr(bb.denoiser.config, "use_linear_projection", False)):  # SD2.x: Linear proj_in/out
        return "sd21" if bb.prediction_type == "v_prediction" else "sd21-base"
    return "sd15"


def resumed_at(out: Path) -> list[int]:
    """Steps at which this run was resumed (``resume`` records of its events.jsonl since the last ``start``)."""
    from .events import read_events

    steps: list[int] = []
    for rec in read_events(Path(out) / "events.jsonl"):
        if rec.get("event") == "start":
            steps = []
        elif rec.get("event") == "resume" and isinstance(rec.get("step"), int):
            steps.append(rec["step"])
    return steps


def run_metadata(d: TrainedRun) -> dict:
    """``title``, ``one_step`` and ``provenance`` for the exported files."""
    c, s = d.cfg, d.settings
    return {
        "title": c.output.title or f"WaDi {c.adapter.kind} student of {Path(c.model.base).name}",
        "one_step": {"timestep": s.timestep, "alpha_bar_T": s.alpha_bar_T, "prediction_type": d.bb.prediction_type},
        "provenance": {
            "method": "WaDi VSD distillation", "adapter": c.adapter.kind, "student_rank": c.adapter.student_rank,
            "fake_rank": c.adapter.fake_rank, "student_targets": c.adapter.student_targets,
            "fake_targets": c.adapter.fake_targets, "steps": d.step, "alpha_bar_source": c.vsd.alpha_bar,
            "global_batch": d.global_batch * c.train.grad_accum, "student_lr": c.optim.student_lr,
            "fake_lr": c.optim.fake_lr, "teacher_cfg": c.vsd.guidance_scale,
            "fake_cfg": c.vsd.fake_guidance_scale, "seed": c.train.seed, "ema_decay": c.train.ema_decay,
            "timestep": c.vsd.timestep, "conv_lr_scale": c.optim.conv_lr_scale,
            "regression_weight": c.vsd.regression_weight, "regression_ramp": c.vsd.regression_ramp,
            "base_model": str(c.model.base), "base_fingerprint": d.base_fp, "config_hash": d.cfg_hash,
            "prompts": str(c.data.prompts), "num_prompts": len(d.prompts),
            # A stopped and resumed run is the same run: say where it was continued from checkpoints.
            "resumed_at_steps": resumed_at(d.out),
        },
    }


def export_student(d: TrainedRun, adapter: str, path: Path, rank: int, targets: str, title: str | None = None) -> Path:
    """Write LoRaD adapter ``adapter`` of the run's base as a ``.lorad.safetensors`` (lorad.bridge)."""
    from ..lorad.bridge import export_adapter

    meta = run_metadata(d)
    return export_adapter(d.views.base, adapter, path, arch=arch_name(d.bb), target_preset=targets,
                          title=title or meta["title"], one_step=meta["one_step"] if adapter == "student" else None,
                          provenance=meta["provenance"], force=True, dtype=torch.float32)


def merged_denoiser(views: ModelViews) -> nn.Module:
    """A plain diffusers denoiser with the student baked in (a copy; the run is untouched)."""
    kind = views.student.kind
    if kind == "full":
        m = copy.deepcopy(views.student_module)
        return m.to(next(views.base.parameters()).dtype)
    m = copy.deepcopy(views.base)
    if kind == "lorad":
        inject.set_active(m, None)
        inject.merge(m, "student", keep_original=False)
    else:
        from peft.tuners.tuners_utils import BaseTunerLayer

        for name, layer in list(m.named_modules()):
            if isinstance(layer, BaseTunerLayer):
                if "student" in getattr(layer, "lora_A", {}):
                    layer.merge(adapter_names=["student"])
                parent, _, child = name.rpartition(".")
                setattr(m.get_submodule(parent) if parent else m, child, layer.get_base_layer())
    inject.remove(m, bake=True)  # every LoRaD layer (baked student, unused fake) back to a plain module
    return m


def export_merged_folder(d: TrainedRun, folder: Path, force: bool) -> Path:
    """A complete diffusers folder: the base's other components and the merged denoiser."""
    if folder.exists() and not force:
        raise FileExistsError(f"{folder} exists (use --output.force true)")
    den_name = "transformer" if d.bb.kind == "pixart" else "unet"
    merged = merged_denoiser(d.views)

    def write(tmp: Path) -> None:
        base = Path(d.cfg.model.base)
        for item in base.iterdir():
            if item.name == den_name or item.name.startswith("."):
                continue
            (shutil.copytree if item.is_dir() else shutil.copy2)(item, tmp / item.name)
        merged.save_pretrained(tmp / den_name, safe_serialization=True)

    atomic_dir(folder, write)
    return folder


def export_outputs(d: TrainedRun) -> dict[str, Path]:
    """Everything the config asks for, into ``output.dir``."""
    c, out = d.cfg, d.out
    paths: dict[str, Path] = {}
    with d.ema.applied() if d.ema is not None else contextlib.nullcontext():
        if c.adapter.kind == "lorad":
            paths["student"] = export_student(d, "student", out / "student.lorad.safetensors",
                                              c.adapter.student_rank, c.adapter.student_targets)
        else:
            # LoRA/DoRA/full students are ablation baselines: their raw tensors, for analysis.
            from safetensors.torch import save_file

            p = out / f"student.{c.adapter.kind}.safetensors"
            sd = {k: v.float().contiguous().cpu() for k, v in d.views.student.state().items()}
            md = {k: json.dumps(v) for k, v in run_metadata(d).items()}
            atomic_save(p, lambda tmp: save_file(sd, str(tmp), metadata=md))
            paths["student"] = p
        if c.output.export_merged:
            paths["merged"] = export_merged_folder(d, out / "merged", force=True)
        if c.output.export_single_file:
            paths["single_file"] = export_single_file(
                merged_denoiser(d.views), Path(c.model.base), out / "student-merged.safetensors", arch_name(d.bb),
                c.output.title or "WaDi student", d.settings.timestep, d.settings.alpha_bar_T)
    if c.output.export_fake and d.views.fake.kind == "lorad":
        title = run_metadata(d)["title"] + " (fake score)"
        paths["fake"] = export_student(d, "fake", out / "fake.lorad.safetensors", c.adapter.fake_rank,
                                       c.adapter.fake_targets, title)
    for k, p in paths.items():
        d.events.write("export", kind=k, path=str(p))
    return paths
