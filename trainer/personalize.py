"""``wadi personalize``: the typed config of a DreamBooth-style LoRaD fine-tune (issue 5, section 3).

Two targets, one config:

* ``model.student`` empty: the base (teacher) model itself is fine-tuned with the standard
  eps-MSE denoising loss on VAE latents (DreamBooth).  The adapter can later be stacked on a
  WaDi student (angles add; ``docs/personalization.md`` measures how well that transfers).
* ``model.student`` = a WaDi ``.lorad`` student: base + student are frozen, the student is
  active, and a new adapter trains on top of it with a one-step objective (``objective``).

This module is the config only (the trainer tab imports it to build its form); the training
is :mod:`.personalize_train`.  Parsing, overrides, YAML and hashing are :mod:`.config`'s.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from .config import ModelConfig, TrainConfig, config_hash, to_dict, typed_from_dict
from .ftconfig import FT_NOT_HASHED, FTOptimConfig, FTOutputConfig, ImageDataConfig, check_common, raise_first

__all__ = ["CONFIG_VERSION", "PersonalizeConfig", "NOT_HASHED", "from_dict", "to_dict", "validate", "run_hash",
           "objective_of", "DEFAULT_NAME"]

CONFIG_VERSION = 1
DEFAULT_NAME = "personal"


@dataclass
class PersonalModelConfig(ModelConfig):
    # A WaDi student .lorad.safetensors to personalize directly (it stays frozen and active);
    # "" = personalize the base model itself.
    student: str = ""


@dataclass
class PersonalAdapterConfig:
    rank: int = 8
    targets: str = "paper-student"  # LoRaD target preset (the student's layers, so angles can be stacked)
    seed: int = 0  # init of B


@dataclass
class PersonalDataConfig(ImageDataConfig):
    # The prompt naming the subject, with its identifier ("a photo of sks dog"); every image's
    # caption when there are no caption files, and the file's modelspec.trigger_phrase.
    instance_prompt: str = ""
    class_prompt: str = ""  # the subject's class without the identifier ("a photo of a dog"): prior preservation


@dataclass
class PriorConfig:
    enabled: bool = False  # prior preservation: also train on class images made by the model being tuned
    weight: float = 1.0  # weight of the class-image loss
    num_images: int = 50  # class images to generate (cached and reused)
    class_dir: str = ""  # cache of the generated class images; "" = <output.dir>/class_images
    steps: int = 25  # DDIM steps for a base model (a student generates in its one step)
    guidance: float = 5.0  # CFG for a base model's class images


@dataclass
class ObjectiveConfig:
    # auto: "eps" for a base model, "onestep" for a student.  eps = eps-MSE at t ~ U{t_min..t_max};
    # onestep = x0 reconstruction at the student's T plus eps-MSE at random t (weights below).
    kind: Literal["auto", "eps", "onestep"] = "auto"
    t_min: int = 0
    t_max: int = 999
    x0_weight: float = 1.0  # onestep: weight of MSE(x0 predicted at T, x0), in latent units
    eps_weight: float = 1.0  # onestep: weight of the eps-MSE at random t
    onestep_fraction: float = 0.5  # onestep: fraction of each batch trained at T (the rest at random t)


@dataclass
class PersonalOutputConfig(FTOutputConfig):
    dir: str = "outputs/personalize"
    # Base-model runs: a WaDi student .lorad to preview in the sample grids, stacked with the
    # new adapter (the transfer this adapter is meant for).
    preview_student: str = ""


@dataclass
class PersonalizeConfig:
    version: int = CONFIG_VERSION
    model: PersonalModelConfig = field(default_factory=PersonalModelConfig)
    adapter: PersonalAdapterConfig = field(default_factory=PersonalAdapterConfig)
    data: PersonalDataConfig = field(default_factory=PersonalDataConfig)
    prior: PriorConfig = field(default_factory=PriorConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    optim: FTOptimConfig = field(default_factory=FTOptimConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(max_steps=400, batch_size=4))
    output: PersonalOutputConfig = field(default_factory=PersonalOutputConfig)
    resume: str = ""  # "", "latest" or a checkpoint folder


# The student file enters the run's fingerprint (like the base), not the config hash.
NOT_HASHED = FT_NOT_HASHED | {"model.student", "prior.class_dir", "output.preview_student"}


def from_dict(data: dict[str, Any]) -> PersonalizeConfig:
    return typed_from_dict(PersonalizeConfig, data, CONFIG_VERSION)


def objective_of(cfg: PersonalizeConfig) -> str:
    """The objective actually used: ``auto`` resolves by whether a student is personalized."""
    if cfg.objective.kind != "auto":
        return cfg.objective.kind
    return "onestep" if cfg.model.student else "eps"


def validate(cfg: PersonalizeConfig) -> None:
    """Cross-field checks that a type cannot express (every message names the field)."""
    p, ob = cfg.prior, cfg.objective
    checks = check_common(cfg) + [
        (cfg.adapter.rank >= 1, "adapter.rank", "must be >= 1"),
        (bool(cfg.data.instance_prompt.strip()), "data.instance_prompt",
         "is required (the prompt with the subject's identifier, e.g. 'a photo of sks dog')"),
        (not p.enabled or bool(cfg.data.class_prompt.strip()), "data.class_prompt",
         "is required with prior.enabled (e.g. 'a photo of a dog')"),
        (p.weight >= 0, "prior.weight", "must be >= 0"),
        (not p.enabled or p.num_images >= 1, "prior.num_images", "must be >= 1 with prior.enabled"),
        (p.steps >= 1, "prior.steps", "must be >= 1"),
        (0 <= ob.t_min <= ob.t_max <= 999, "objective.t_min/t_max", "need 0 <= t_min <= t_max <= 999"),
        (ob.x0_weight >= 0 and ob.eps_weight >= 0, "objective.x0_weight/eps_weight", "must be >= 0"),
        (0.0 <= ob.onestep_fraction <= 1.0, "objective.onestep_fraction", "must be in [0, 1]"),
        (objective_of(cfg) != "onestep" or bool(cfg.model.student), "objective.kind",
         "'onestep' needs model.student (a WaDi student .lorad)"),
        (not (cfg.model.student and cfg.output.preview_student), "output.preview_student",
         "is for base-model runs; a student run previews its own student"),
    ]
    raise_first(checks)


def run_hash(cfg: PersonalizeConfig) -> str:
    return config_hash(cfg, NOT_HASHED)
