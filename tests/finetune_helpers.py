"""Shared pieces of the personalization / relation tests: a random-init tiny-world SD folder, a random
WaDi-style student for it, captioned image folders and seconds-long configs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from wadi_lorad.lorad import inject
from wadi_lorad.trainer.config import apply_overrides
from wadi_lorad.trainer.personalize import PersonalizeConfig
from wadi_lorad.trainer.relation import RelationConfig
from wadi_lorad.trainer.tinyworld import build_tiny_sd
from wadi_lorad.trainer.tinyworld.concepts import write_concept_folder, write_relation_folder

SMALL_UNET = {"block_out_channels": (32, 32, 64)}


@pytest.fixture(scope="session", name="tiny_world")
def tiny_world_fixture(tmp_path_factory) -> dict[str, Path]:
    """``base`` (random-init tiny SD1.5 folder), ``student`` (a random one-step .lorad for it),
    ``concept`` / ``relation`` (captioned image folders)."""
    root = tmp_path_factory.mktemp("tinyworld")
    base = build_tiny_sd(root / "base", seed=0, unet=SMALL_UNET)
    student = root / "student.lorad.safetensors"
    write_random_student(base, student)
    return {"base": base, "student": student, "concept": write_concept_folder(root / "concept", n=4, seed=0),
            "relation": write_relation_folder(root / "relation", n=4, seed=0)}


def write_random_student(base: Path, path: Path, seed: int = 3) -> Path:
    """A LoRaD student with non-zero random angles (what a distilled student looks like to these runs)."""
    from wadi_lorad.lorad.bridge import export_adapter
    from wadi_lorad.trainer.backbones import load_backbone
    from wadi_lorad.trainer.export import arch_name

    bb = load_backbone(base, text=False)
    inject.inject(bb.denoiser, "student", "paper-student", rank=4, seed=seed)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, layer in inject.lorad_layers(bb.denoiser):  # A is zero at init: give the student real angles
            a = layer.lorad["student"].A
            a.copy_(torch.randn(a.shape, generator=g) * 0.3)
    one = {"timestep": 999, "alpha_bar_T": float(bb.alphas_cumprod[999]), "prediction_type": "epsilon"}
    return export_adapter(bb.denoiser, "student", path, arch=arch_name(bb), target_preset="paper-student",
                          title="random test student", one_step=one)


def personalize_cfg(tw: dict[str, Path], out: Path, **over) -> PersonalizeConfig:
    pairs = {"model.base": str(tw["base"]), "data.images": str(tw["concept"]), "data.instance_prompt": "a sks shape",
             "data.class_prompt": "a shape", "output.dir": str(out), "data.cache_dir": str(out.parent / "text_cache"),
             "adapter.rank": "2", "train.batch_size": "2", "train.max_steps": "3", "optim.lr": "1e-2",
             "output.sample_every": "0", "output.checkpoint_every": "0"}
    pairs.update({k.replace("__", "."): str(v) for k, v in over.items()})
    return apply_overrides(PersonalizeConfig(), list(pairs.items()))


def relation_cfg(tw: dict[str, Path], out: Path, **over) -> RelationConfig:
    pairs = {"model.base": str(tw["base"]), "data.images": str(tw["relation"]), "output.dir": str(out),
             "train.batch_size": "2", "train.max_steps": "3", "output.sample_every": "0",
             "output.checkpoint_every": "0"}
    pairs.update({k.replace("__", "."): str(v) for k, v in over.items()})
    return apply_overrides(RelationConfig(), list(pairs.items()))
