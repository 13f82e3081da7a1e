"""Images from one base model under any set of active LoRaD adapters, for the tiny-world measurements.

One :class:`AdapterBench` holds the base (the shipped teacher by default), a WaDi student
loaded as adapter ``"student"``, any number of further ``.lorad`` files under names of your
choice, and learned token embeddings; :meth:`AdapterBench.images` generates with a chosen
active set, one step (``lorad.onestep.generate``, the function the ComfyUI nodes use) or
multi-step DDIM + CFG, from the tiny world's shared evaluation noise (``metrics.eval_noise``).
Stacking (several names active) adds the adapters' angles (``lorad.functional``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

from ...lorad import inject
from ..backbones import TextCond, load_backbone
from ..cmd_sample import load_student, one_step_params
from ..sampling import one_step, teacher_multistep
from .metrics import DEFAULT_TEACHER, eval_noise

__all__ = ["AdapterBench"]


class AdapterBench:
    def __init__(self, student: str | Path | None, base: str | Path = DEFAULT_TEACHER, device: str = "cpu") -> None:
        self.bb = load_backbone(base).to(device)
        self.device = device
        self.student = load_student(self.bb, student) if student else None
        self.T, self.ab_T = one_step_params(self.student, self.bb, None, None)
        inject.set_active(self.bb.denoiser, None)
        self.null = self.bb.null_cond(device).float()
        self._cond: dict[str, Tensor] = {}
        self.tokens: dict[str, str] = {}

    def add_adapter(self, name: str, path: str | Path) -> None:
        from ...lorad.bridge import load_adapter

        load_adapter(self.bb.denoiser, name, path)
        inject.set_active(self.bb.denoiser, None)

    def add_embedding(self, path: str | Path, name: str | None = None) -> str:
        """Load a textual-inversion file into the text encoder; returns the text standing for it."""
        from ..textinv import install_embedding

        tok, enc = self.bb.text[0]
        text = install_embedding(tok, enc, path, name)
        self.tokens[name or Path(path).name.split(".")[0]] = text
        return text

    def encode(self, prompts: Sequence[str]) -> TextCond:
        todo = [p for p in dict.fromkeys(prompts) if p not in self._cond]
        if todo:
            embeds = self.bb.encode_prompts(todo, self.device).embeds.float()
            self._cond.update({p: e for p, e in zip(todo, embeds)})
        return TextCond(torch.stack([self._cond[p] for p in prompts]))

    @torch.no_grad()
    def images(self, prompts: Sequence[str], active: Sequence[str] = (), seed: int = 0, steps: int = 1,
               guidance: float = 1.0, batch: int = 64) -> Tensor:
        """``[N, 3, H, W]`` in [0, 1]: one step at the student's T (``steps == 1``) or DDIM with CFG."""
        bb, den = self.bb, self.bb.denoiser
        noise = eval_noise(len(prompts), seed, bb.latent_shape(0))
        out = []
        with inject.active_adapters(den, tuple(active)):
            for i in range(0, len(prompts), batch):
                cond = self.encode(prompts[i: i + batch]).to(self.device)
                z = noise[i: i + batch].to(self.device)
                if steps == 1:
                    lat = one_step(bb, den, cond, z, self.ab_T, self.T, self.null, guidance)
                else:
                    lat = teacher_multistep(bb, den, cond, self.null, z, steps, guidance)
                out.append(bb.decode(lat).cpu())
        return torch.cat(out)
