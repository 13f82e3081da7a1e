"""Exponential moving average of the student's trained parameters (used for export when on)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import Tensor, nn


class EMA:
    """shadow = d * shadow + (1 - d) * param, with d warmed up as min(decay, (1 + n) / (10 + n)).

    The warm-up keeps a short run's EMA from being dominated by the initial
    (teacher-equal) weights.
    """

    def __init__(self, params: dict[str, nn.Parameter], decay: float) -> None:
        self.params = params
        self.decay = decay
        self.updates = 0
        self.shadow = {k: p.detach().float().clone() for k, p in params.items()}

    def current_decay(self) -> float:
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    @torch.no_grad()
    def update(self) -> None:
        d = self.current_decay()
        for k, p in self.params.items():
            self.shadow[k].mul_(d).add_(p.detach().float(), alpha=1 - d)
        self.updates += 1

    def state_dict(self) -> dict[str, Tensor]:
        return {**{f"shadow.{k}": v for k, v in self.shadow.items()}, "updates": torch.tensor(self.updates)}

    def load_state_dict(self, sd: dict[str, Tensor]) -> None:
        for k in self.shadow:
            self.shadow[k].copy_(sd[f"shadow.{k}"])
        self.updates = int(sd["updates"])

    @contextlib.contextmanager
    def applied(self) -> Iterator[None]:
        """Temporarily put the EMA weights into the parameters (for export or sampling)."""
        backup = {k: p.detach().clone() for k, p in self.params.items()}
        with torch.no_grad():
            for k, p in self.params.items():
                p.copy_(self.shadow[k])
        try:
            yield
        finally:
            with torch.no_grad():
                for k, p in self.params.items():
                    p.copy_(backup[k])
