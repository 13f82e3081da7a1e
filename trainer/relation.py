"""``wadi relation``: the typed config of ReVersion-style relation inversion (issue 5, section 4).

A new token ``<R>`` is added to the base model's tokenizer and text encoder; only its
embedding trains, on exemplar images whose captions put ``<R>`` where the relation goes
("a cat <R> a wall").  Loss = ``denoise.weight`` x eps-MSE (timesteps by ReVersion's
relation-focal importance sampling) + ``steer.weight`` x the relation-steering contrastive
loss (:func:`.textinv.steer_loss`).  Defaults are ReVersion's published settings: steering
weight 0.01, temperature 0.07, 4 positives per sample, alpha 0.5, initializer "and", AdamW
with weight decay 0.01 and lr 2.5e-4 x the batch (their ``--scale_lr`` at batch 2 x 4).

This module is the config only (the trainer tab imports it); the run is :mod:`.relation_train`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .config import ModelConfig, TrainConfig, config_hash, to_dict, typed_from_dict
from .ftconfig import FT_NOT_HASHED, FTOptimConfig, FTOutputConfig, ImageDataConfig, check_common, raise_first

__all__ = ["CONFIG_VERSION", "RelationConfig", "NOT_HASHED", "from_dict", "to_dict", "validate", "run_hash",
           "DEFAULT_NAME"]

CONFIG_VERSION = 1
DEFAULT_NAME = "relation"


@dataclass
class TokenConfig:
    placeholder: str = "<R>"  # the token captions and prompts use for the relation
    initializer: str = "and"  # a one-token word whose embedding is <R>'s starting point
    num_vectors: int = 1  # embedding vectors behind the token (ReVersion: 1)


@dataclass
class SteerConfig:
    weight: float = 0.01  # relation-steering contrastive loss weight (0 = off)
    temperature: float = 0.07
    num_positives: int = 4  # prepositions drawn per sample as positives
    # Basis words for the positives; [] = the built-in English prepositions (one-token ones are used).
    prepositions: list[str] = field(default_factory=list)


@dataclass
class DenoiseConfig:
    weight: float = 1.0  # eps-MSE weight
    importance_sampling: bool = True  # ReVersion's relation-focal t sampling (else uniform)
    alpha: float = 0.5  # skew of p(t) ~ 1 - alpha cos(pi t / T)


@dataclass
class RelationOutputConfig(FTOutputConfig):
    dir: str = "outputs/relation"
    preview_student: str = ""  # a WaDi student .lorad: add its one-step images to the sample grids


@dataclass
class RelationConfig:
    version: int = CONFIG_VERSION
    model: ModelConfig = field(default_factory=ModelConfig)
    token: TokenConfig = field(default_factory=TokenConfig)
    data: ImageDataConfig = field(default_factory=lambda: ImageDataConfig(captions="files"))
    steer: SteerConfig = field(default_factory=SteerConfig)
    denoise: DenoiseConfig = field(default_factory=DenoiseConfig)
    optim: FTOptimConfig = field(default_factory=lambda: FTOptimConfig(lr=2e-3, weight_decay=0.01))
    train: TrainConfig = field(default_factory=lambda: TrainConfig(max_steps=500, batch_size=8))
    output: RelationOutputConfig = field(default_factory=RelationOutputConfig)
    resume: str = ""  # "", "latest" or a checkpoint folder


NOT_HASHED = FT_NOT_HASHED | {"output.preview_student"}


def from_dict(data: dict[str, Any]) -> RelationConfig:
    return typed_from_dict(RelationConfig, data, CONFIG_VERSION)


def validate(cfg: RelationConfig) -> None:
    t, s, d = cfg.token, cfg.steer, cfg.denoise
    ph = t.placeholder.strip()
    raise_first(check_common(cfg) + [
        (bool(ph) and " " not in ph, "token.placeholder", "must be one word without spaces, e.g. <R>"),
        (bool(t.initializer.strip()), "token.initializer", "is required (a one-token word such as 'and')"),
        (t.num_vectors >= 1, "token.num_vectors", "must be >= 1"),
        (cfg.data.captions != "instance", "data.captions",
         "must be 'files' or 'auto': each exemplar caption names its objects around the placeholder"),
        (s.weight >= 0 and d.weight >= 0, "steer.weight/denoise.weight", "must be >= 0"),
        (s.weight + d.weight > 0, "steer.weight/denoise.weight", "at least one must be > 0"),
        (s.temperature > 0, "steer.temperature", "must be > 0"),
        (s.num_positives >= 1, "steer.num_positives", "must be >= 1"),
        (0.0 <= d.alpha < 1.0, "denoise.alpha", "must be in [0, 1)"),
    ])


def run_hash(cfg: RelationConfig) -> str:
    return config_hash(cfg, NOT_HASHED)
