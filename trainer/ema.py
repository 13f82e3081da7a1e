"""Exponential moving average of the trained parameters (used for export and previews when on).

The average itself is diffusers' ``EMAModel``: shadow <- shadow - (1 - d) * (shadow - param) with
d = min(decay, (1 + k) / (10 + k)) at its k-th update after the first, and d = 0 at the first (the
average starts at the first trained weights, not at the teacher-equal initial ones).  This wrapper
adds what a run needs around it: a float32 shadow whatever the parameters' dtype, a state dict keyed
by parameter name (``shadow.<name>`` and ``updates``, the format of the run checkpoints' ``ema.safetensors``
since the first release, so old checkpoints load), and a context that puts the average in place.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import Tensor, nn


class EMA:
    def __init__(self, params: dict[str, nn.Parameter], decay: float) -> None:
        from diffusers.training_utils import EMAModel

        self.params = params
        self.decay = decay
        self._model = EMAModel(list(params.values()), decay=decay, min_decay=0.0, update_after_step=0,
                               use_ema_warmup=False, foreach=False)
        self._model.to(dtype=torch.float32)

    @property
    def updates(self) -> int:
        return int(self._model.optimization_step)

    @property
    def shadow(self) -> dict[str, Tensor]:
        """The averaged weights by parameter name (float32, live: not copies)."""
        return dict(zip(self.params, self._model.shadow_params))

    def current_decay(self) -> float:
        """The decay the next :meth:`update` uses."""
        return float(self._model.get_decay(self._model.optimization_step + 1))

    def update(self) -> None:
        self._model.step(self.params.values())

    def state_dict(self) -> dict[str, Tensor]:
        return {**{f"shadow.{k}": v for k, v in self.shadow.items()}, "updates": torch.tensor(self.updates)}

    def load_state_dict(self, sd: dict[str, Tensor]) -> None:
        missing = [f"shadow.{k}" for k in self.params if f"shadow.{k}" not in sd] + (
            [] if "updates" in sd else ["updates"])
        if missing:
            raise KeyError(f"EMA state lacks {missing[:3]} (expected shadow.<parameter> for every trained "
                           "parameter and 'updates')")
        with torch.no_grad():
            for k, s in self.shadow.items():
                s.copy_(sd[f"shadow.{k}"])
        self._model.optimization_step = int(sd["updates"])

    @contextlib.contextmanager
    def applied(self) -> Iterator[None]:
        """Temporarily put the averaged weights into the parameters (for export or sampling)."""
        params = list(self.params.values())
        self._model.store(params)
        self._model.copy_to(params)
        try:
            yield
        finally:
            self._model.restore(params)
