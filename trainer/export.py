"""Run outputs: ``student.lorad.safetensors`` (+ fake), a merged diffusers folder, a single-file checkpoint.

The metadata records what inference needs to reproduce the student (one-step
timestep, the abar_T it was distilled with, the base's prediction type) and the
provenance of the run (steps, learning rates, CFG, seed, base fingerprint, config
hash).  With EMA on, every export uses the EMA weights.
"""

from __future__ import annotations

import contextlib
import copy
import json
import shutil
from pathlib import Path

import torch
from torch import nn

from ..lorad import inject as LI
from .fsutil import atomic_dir, atomic_save

__all__ = ["arch_name", "run_metadata", "export_student", "load_student_file", "merged_denoiser",
           "export_merged_folder", "export_outputs"]


def arch_name(bb) -> str:
    """Architecture tag for the key map: sd1 (768-d text), sd2 (1024-d), sdxl, pixart."""
    if bb.kind != "sd":
        return bb.kind
    return "sd2" if int(bb.denoiser.config.cross_attention_dim) == 1024 else "sd1"


def run_metadata(d) -> dict:
    c, s = d.cfg, d.settings
    return {
        "arch": arch_name(d.bb),
        "title": c.output.title or f"WaDi {c.adapter.kind} student of {Path(c.model.base).name}",
        "one_step": {"timestep": s.timestep, "alpha_bar_T": s.alpha_bar_T, "alpha_bar_source": c.vsd.alpha_bar,
                     "prediction_type": d.bb.prediction_type},
        "provenance": {
            "method": "WaDi VSD distillation", "adapter": c.adapter.kind, "student_rank": c.adapter.student_rank,
            "fake_rank": c.adapter.fake_rank, "student_targets": c.adapter.student_targets,
            "fake_targets": c.adapter.fake_targets, "steps": d.step,
            "global_batch": d.global_batch * c.train.grad_accum, "student_lr": c.optim.student_lr,
            "fake_lr": c.optim.fake_lr, "guidance_scale": c.vsd.guidance_scale,
            "fake_guidance_scale": c.vsd.fake_guidance_scale, "seed": c.train.seed,
            "ema_decay": c.train.ema_decay, "base_model": str(c.model.base), "base_fingerprint": d.base_fp,
            "config_hash": d.cfg_hash, "prompts": str(c.data.prompts), "num_prompts": len(d.prompts),
        },
    }


def export_student(path: Path, state: dict[str, dict[str, torch.Tensor]], meta: dict, rank: int,
                   target_preset: str, force: bool = True) -> Path:
    """Write one LoRaD adapter (``adapter_state`` layout, diffusers module names) as a .lorad file.

    PROVISIONAL layout until ``lorad.io`` lands: keys ``<module>.A``/``.B``/``.theta``
    (float32), metadata values JSON-encoded.  Kept behind this one function.
    """
    from safetensors.torch import save_file

    if path.exists() and not force:
        raise FileExistsError(f"{path} exists (pass force to overwrite)")
    tensors = {f"{mod}.{k}": v.detach().float().contiguous().cpu() for mod, t in state.items() for k, v in t.items()}
    md = {"format": "lorad-provisional", "rank": str(rank), "target_preset": target_preset,
          **{k: v if isinstance(v, str) else json.dumps(v) for k, v in meta.items()}}
    atomic_save(path, lambda tmp: save_file(tensors, str(tmp), metadata=md))
    return path


def load_student_file(path: str | Path) -> tuple[dict[str, dict[str, torch.Tensor]], dict]:
    """Read a file written by :func:`export_student`: ``(adapter_state layout, metadata)``."""
    from safetensors import safe_open

    state: dict[str, dict[str, torch.Tensor]] = {}
    with safe_open(str(path), "pt") as f:
        raw = f.metadata() or {}
        for key in f.keys():
            mod, _, k = key.rpartition(".")
            state.setdefault(mod, {})[k] = f.get_tensor(key)
    meta = {}
    for k, v in raw.items():
        try:
            meta[k] = json.loads(v)
        except (json.JSONDecodeError, TypeError):
            meta[k] = v
    return state, meta


def _ema(d):
    return d.ema.applied() if d.ema is not None else contextlib.nullcontext()


def merged_denoiser(d) -> nn.Module:
    """A plain diffusers denoiser with the student baked in (a copy; the run is untouched)."""
    kind = d.cfg.adapter.kind
    if kind == "full":
        m = copy.deepcopy(d.views.student_module)
        return m.to(next(d.bb.denoiser.parameters()).dtype)
    m = copy.deepcopy(d.views.base)
    if kind == "lorad":
        LI.set_active(m, None)
        LI.merge(m, "student", keep_original=False)
    else:
        from peft.tuners.tuners_utils import BaseTunerLayer

        for name, layer in list(m.named_modules()):
            if isinstance(layer, BaseTunerLayer):
                if "student" in getattr(layer, "lora_A", {}):
                    layer.merge(adapter_names=["student"])
                parent, _, child = name.rpartition(".")
                setattr(m.get_submodule(parent) if parent else m, child, layer.get_base_layer())
    # Bake: forget the merge bookkeeping so remove() keeps the rotated weights (the core's
    # remove() refuses layers with merged adapters).
    for _, layer in LI.lorad_layers(m):
        layer.merged = []
        layer._unmerged_weight = None
    LI.remove(m)  # every LoRaD layer (baked student, unused fake) back to a plain module
    return m


def export_merged_folder(d, folder: Path, force: bool) -> Path:
    """A complete diffusers folder: the base's other components and the merged denoiser."""
    if folder.exists() and not force:
        raise FileExistsError(f"{folder} exists (use --output.force true)")
    den_name = "transformer" if d.bb.kind == "pixart" else "unet"
    merged = merged_denoiser(d)

    def write(tmp: Path) -> None:
        base = Path(d.cfg.model.base)
        for item in base.iterdir():
            if item.name == den_name or item.name.startswith("."):
                continue
            (shutil.copytree if item.is_dir() else shutil.copy2)(item, tmp / item.name)
        merged.save_pretrained(tmp / den_name, safe_serialization=True)

    atomic_dir(folder, write)
    return folder


def export_outputs(d) -> dict[str, Path]:
    """Everything the config asks for, into ``output.dir``."""
    c, out = d.cfg, d.out
    meta = run_metadata(d)
    paths: dict[str, Path] = {}
    with _ema(d):
        if c.adapter.kind == "lorad":
            state = LI.adapter_state(d.views.base, "student")
            paths["student"] = export_student(out / "student.lorad.safetensors", state, meta, c.adapter.student_rank,
                                              c.adapter.student_targets)
        else:
            from safetensors.torch import save_file

            p = out / f"student.{c.adapter.kind}.safetensors"
            sd = {k: v.float().contiguous().cpu() for k, v in d.views.student.state().items()}
            atomic_save(p, lambda tmp: save_file(sd, str(tmp), metadata={k: json.dumps(v) for k, v in meta.items()}))
            paths["student"] = p
        if c.output.export_merged:
            paths["merged"] = export_merged_folder(d, out / "merged", force=True)
    if c.output.export_fake and d.views.fake.kind == "lorad":
        fmeta = {**meta, "title": meta["title"] + " (fake score)"}
        paths["fake"] = export_student(out / "fake.lorad.safetensors", LI.adapter_state(d.views.base, "fake"), fmeta,
                                       c.adapter.fake_rank, c.adapter.fake_targets)
    for k, p in paths.items():
        d.events.write("export", kind=k, path=str(p))
    return paths
