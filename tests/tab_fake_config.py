"""A small typed config (every widget type) with the config-module contract the tab expects.

Stands in for trainer/config.py in the tab's unit tests and drives tests/tab_fake_trainer.py.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Literal

CONFIG_VERSION = 2


@dataclass
class ModelSection:
    base: str = "models/teacher"  # diffusers folder of the teacher
    # precision of the frozen weights
    # (two comment lines above the field)
    dtype: Literal["auto", "fp32", "bf16"] = "auto"


@dataclass
class TrainSection:
    max_steps: int = 20
    sleep: float = field(default=0.02, metadata={"help": "seconds per fake step"})
    betas: tuple[float, float] = (0.9, 0.999)
    ranks: list[int] = field(default_factory=lambda: [4, 8])
    honour_stop: bool = True
    note: str | None = None  # optional free text


@dataclass
class OutputSection:
    dir: str = "runs/a"  # where events.jsonl goes
    sample_every: int = 5
    sample_prompts: list[str] = field(default_factory=lambda: ["a red circle", "a blue square, left"])


@dataclass
class FakeConfig:
    version: int = CONFIG_VERSION
    model: ModelSection = field(default_factory=ModelSection)
    train: TrainSection = field(default_factory=TrainSection)
    output: OutputSection = field(default_factory=OutputSection)
    resume: str = ""  # "", "latest" or a checkpoint folder


def _build(cls, data, where):
    hints = typing.get_type_hints(cls)
    unknown = [k for k in data if k not in hints]
    if unknown:
        raise ValueError(f"{where or 'config'}: unknown key(s) {unknown}")
    kw = {}
    for k, v in data.items():
        tp = hints[k]
        if dataclasses.is_dataclass(tp):
            kw[k] = _build(tp, v or {}, f"{where}{k}.")
        elif tp is int and not (isinstance(v, int) and not isinstance(v, bool)):
            raise ValueError(f"{where}{k}: expected int, got {v!r}")
        elif typing.get_origin(tp) is tuple:
            kw[k] = tuple(float(x) for x in v)
        elif typing.get_origin(tp) is list and typing.get_args(tp)[0] is int:
            kw[k] = [int(x) for x in v]
        else:
            kw[k] = v
    return cls(**kw)


def from_dict(data: dict) -> FakeConfig:
    data = dict(data)
    version = data.pop("version", CONFIG_VERSION)
    if version == 1:  # migration: v1 called the section "out"
        data["output"] = data.pop("out", {})
    elif version != CONFIG_VERSION:
        raise ValueError(f"version: expected <= {CONFIG_VERSION}, got {version}")
    return _build(FakeConfig, data, "")


def to_dict(cfg: FakeConfig) -> dict:
    d = dataclasses.asdict(cfg)
    d["train"]["betas"] = list(d["train"]["betas"])
    return d


def validate(cfg: FakeConfig) -> None:
    if cfg.train.max_steps < 1:
        raise ValueError("train.max_steps: must be >= 1")
