"""What every tiny-world training stage shares: accelerate set-up, resumable checkpoints, EMA, logs.

A stage is ``for step in range(start, total): batch = f(seed, step); update``; since
batches are pure functions of the step (``data.py``), resuming needs only the
model/optimizer/EMA state and the step number, which :class:`Stage` writes
atomically every ``checkpoint_every`` steps.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .io import atomic_torch_save


class EMA:
    """Exponential moving average of parameters (fp32, beside the parameters): diffusers' ``EMAModel``.

    The effective decay ramps up as ``min(decay, (1 + n) / (10 + n))`` at the n-th update (n >= 1),
    so early, still-random weights are forgotten quickly; ``update_after_step=-1`` makes EMAModel's
    warm-up count from the first update, the schedule the shipped teacher was trained with.  The
    state (``shadow`` list, ``updates``, ``decay``) is the stage checkpoints' format.
    """

    def __init__(self, params: Iterable[nn.Parameter], decay: float) -> None:
        from diffusers.training_utils import EMAModel

        self.params = list(params)
        self.decay = decay
        self._model = EMAModel(self.params, decay=decay, min_decay=0.0, update_after_step=-1, use_ema_warmup=False,
                               foreach=True)
        self._model.to(dtype=torch.float32)

    @property
    def shadow(self) -> list[torch.Tensor]:
        return self._model.shadow_params

    @property
    def updates(self) -> int:
        return int(self._model.optimization_step)

    @torch.no_grad()
    def update(self) -> None:
        if self.shadow and self.shadow[0].device != self.params[0].device:
            # The model moved (accelerate.prepare puts it on the GPU): keep the average beside it.
            self._model.to(device=self.params[0].device)
        self._model.step(self.params)

    @torch.no_grad()
    def copy_to(self, params: Iterable[nn.Parameter]) -> None:
        self._model.copy_to(params)

    def state_dict(self) -> dict[str, Any]:
        return {"shadow": [s.cpu() for s in self.shadow], "updates": self.updates, "decay": self.decay}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if len(state["shadow"]) != len(self.shadow):
            raise ValueError(f"EMA state has {len(state['shadow'])} tensors, model has {len(self.shadow)}")
        device = self.shadow[0].device if self.shadow else "cpu"
        self._model.shadow_params = [t.float().clone().to(device) for t in state["shadow"]]
        self._model.optimization_step = int(state["updates"])


def make_accelerator(device: str = "auto") -> Any:
    """One accelerate ``Accelerator``; ``device="cpu"`` forces CPU even where CUDA exists."""
    from accelerate import Accelerator

    return Accelerator(cpu=(device == "cpu"), mixed_precision="no")


class Stage:
    """Checkpoint + event-log bookkeeping of one stage in ``out_dir``.

    ``checkpoint.pt`` holds ``{"step", "fingerprint", "models", "optimizers", "ema"}``;
    ``events.jsonl`` gets one JSON line per logged step (append-only).
    """

    def __init__(self, out_dir: Path, fingerprint: dict[str, Any]) -> None:
        self.dir = Path(out_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.fingerprint = json.loads(json.dumps(fingerprint, sort_keys=True, default=str))
        self.ckpt = self.dir / "checkpoint.pt"
        self.t0 = time.perf_counter()
        self.loop_t0: float | None = None
        self.loop_step0 = 0

    def begin(self, step: int) -> None:
        """Mark the first training step (after set-up), so logs report the pure per-step time."""
        self.loop_t0, self.loop_step0 = time.perf_counter(), step

    def resume(self, models: dict[str, nn.Module], optimizers: dict[str, Any], emas: dict[str, EMA]) -> int:
        """Load ``checkpoint.pt`` if present (refusing one written under another config); return its step."""
        if not self.ckpt.is_file():
            return 0
        state = torch.load(self.ckpt, map_location="cpu", weights_only=False)
        if state.get("fingerprint") != self.fingerprint:
            diff = sorted(
                k for k in set(self.fingerprint) | set(state.get("fingerprint", {}))
                if self.fingerprint.get(k) != state.get("fingerprint", {}).get(k)
            )  # fmt: skip
            raise ValueError(
                f"{self.ckpt} was written with a different config (differs in: {', '.join(diff)}); "
                "use another --output folder or delete the checkpoint to start over"
            )
        for name, m in models.items():
            m.load_state_dict(state["models"][name])
        for name, opt in optimizers.items():
            opt.load_state_dict(state["optimizers"][name])
        for name, ema in emas.items():
            ema.load_state_dict(state["ema"][name])
        return int(state["step"])

    def save(self, step: int, models: dict[str, nn.Module], optimizers: dict[str, Any], emas: dict[str, EMA]) -> None:
        state = {
            "step": step,
            "fingerprint": self.fingerprint,
            "models": {k: m.state_dict() for k, m in models.items()},
            "optimizers": {k: o.state_dict() for k, o in optimizers.items()},
            "ema": {k: e.state_dict() for k, e in emas.items()},
        }
        atomic_torch_save(self.ckpt, state)

    def log(self, step: int, **values: float) -> None:
        now = time.perf_counter()
        rec: dict[str, float] = {"step": step, "wall_s": round(now - self.t0, 2)}
        if self.loop_t0 is not None and step > self.loop_step0:
            rec["s_per_step"] = round((now - self.loop_t0) / (step - self.loop_step0), 4)
        rec.update(values)
        with open(self.dir / "events.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(rec) + "\n")


def set_lr(optimizer: Any, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
