"""An official-style WaDi training loop, rewritten from the description of the released code (hooks, loss).

What makes it "official-style" (and what the bench compares against):

* THREE UNet copies in memory: the frozen teacher, the student and the fake score
  ("teacher_lora"), each a full copy of the base weights;
* LoRaD as parameters on each Linear plus a forward hook that rebuilds W_rot and
  calls ``F.linear`` again, so every adapted Linear is computed twice;
* classifier-free guidance with SEPARATE uncond and cond forwards, for the
  teacher and for the fake score (4 forwards where a batched CFG needs 2);
* the same schedule of work per iteration as ours: one student update, then one
  fake update on the same batch; AdamW, grad-norm clip 1.0 on each model.

The official code uses bitsandbytes' 8-bit AdamW on CUDA; this loop uses the same
torch AdamW as our trainer so that only the model structure differs.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import models
import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass
class Draw:
    """The random inputs of one iteration (the same fields as the trainer's Batch)."""

    prompt_idx: Tensor
    z: Tensor
    t: Tensor
    noise: Tensor
    t_fake: Tensor
    noise_fake: Tensor
    drop: Tensor


def draw(gen: torch.Generator, batch: int, latent: tuple[int, int, int], n_prompts: int = 1,
         t_range=(20, 980), fake_t_range=(0, 999), null_prob: float = 0.1) -> Draw:
    idx = torch.randint(0, n_prompts, (batch,), generator=gen)
    z = torch.randn(batch, *latent, generator=gen)
    t = torch.randint(t_range[0], t_range[1] + 1, (batch,), generator=gen)
    n1 = torch.randn(batch, *latent, generator=gen)
    t2 = torch.randint(fake_t_range[0], fake_t_range[1] + 1, (batch,), generator=gen)
    n2 = torch.randn(batch, *latent, generator=gen)
    drop = torch.rand(batch, generator=gen) < null_prob
    return Draw(idx, z, t, n1, t2, n2, drop)


def _bc(v: Tensor, like: Tensor) -> Tensor:
    return v.view(-1, *([1] * (like.dim() - 1))).float()


class OfficialLoop:
    """Teacher + student + fake as three copies; hooks; separate CFG passes."""

    def __init__(self, base: nn.Module, student_rank: int = 256, fake_rank: int = 32, copies: bool = True,
                 lr_student: float = 1e-4, lr_fake: float = 1e-2, guidance: float = 1.5,
                 alpha_bar_T: float = 0.0047, autocast: torch.dtype | None = None,
                 gradient_checkpointing: bool = False, teacher_is_base: bool = False) -> None:
        # ``copies=False`` lets the three models share the frozen tensors (time only: the
        # arithmetic is the same; the memory children always use real copies).
        # ``teacher_is_base``: the caller hands ``base`` over as the teacher, so a memory
        # child never holds a fourth copy while the three are made.
        dup = copy.deepcopy if copies else models.share_base_copy
        self.teacher = base if teacher_is_base else dup(base)
        self.student = dup(base)
        self.fake = dup(base)
        for m in (self.teacher, self.student, self.fake):
            m.requires_grad_(False)
        s_names = models.target_names(self.student, "paper-student")
        f_names = models.target_names(self.fake, "paper-fake")
        self.p_student = models.add_hook_adapters(self.student, s_names, student_rank)
        self.p_fake = models.add_hook_adapters(self.fake, f_names, fake_rank)
        for p in self.p_student + self.p_fake:
            p.requires_grad_(True)
        models._randomize(self.p_student[0::2], 1e-3, 0)  # theta_a off zero: never time on zeros
        models._randomize(self.p_fake[0::2], 1e-3, 1)
        if gradient_checkpointing:
            self.student.enable_gradient_checkpointing()
            self.fake.enable_gradient_checkpointing()
        self.opt_s = torch.optim.AdamW(self.p_student, lr=lr_student, weight_decay=0.0)
        self.opt_f = torch.optim.AdamW(self.p_fake, lr=lr_fake, weight_decay=0.0)
        self.guidance = guidance
        self.abar_T = alpha_bar_T
        self.alphas = _scaled_linear().float()
        self.autocast = autocast

    def _eps(self, model: nn.Module, x: Tensor, t: Tensor, emb: Tensor) -> Tensor:
        dtype = next(model.parameters()).dtype
        dev = x.device.type
        with torch.autocast(dev, dtype=self.autocast, enabled=self.autocast is not None):
            return model(x.to(dtype), t, encoder_hidden_states=emb.to(dtype)).sample.float()

    def _cfg(self, model: nn.Module, x: Tensor, t: Tensor, cond: Tensor, null: Tensor) -> Tensor:
        e_u = self._eps(model, x, t, null.expand(x.shape[0], -1, -1))  # separate passes, as the official code
        e_c = self._eps(model, x, t, cond)
        return e_u + self.guidance * (e_c - e_u)

    def step(self, d: Draw, cond: Tensor, null: Tensor) -> tuple[float, float]:
        dev = d.z.device
        b = d.z.shape[0]
        T = torch.full((b,), 999, dtype=torch.long, device=dev)
        eps_s = self._eps(self.student, d.z, T, cond)
        x0 = (d.z.float() - math.sqrt(1 - self.abar_T) * eps_s) / math.sqrt(self.abar_T)
        ab = self.alphas.to(dev)[d.t]
        with torch.no_grad():
            x_t = torch.sqrt(_bc(ab, x0)) * x0.detach() + torch.sqrt(1 - _bc(ab, x0)) * d.noise
            e_t = self._cfg(self.teacher, x_t, d.t, cond, null)
            e_f = self._cfg(self.fake, x_t, d.t, cond, null)
            g = torch.nan_to_num((1 - _bc(ab, x0)) * (e_t - e_f))
        loss_s = 0.5 * F.mse_loss(x0, (x0 - g).detach())
        loss_s.backward()
        torch.nn.utils.clip_grad_norm_(self.p_student, 1.0)
        self.opt_s.step()
        self.opt_s.zero_grad(set_to_none=True)
        # fake score: eps-MSE weighted by abar_t on the detached sample, null prompt sometimes
        ab2 = self.alphas.to(dev)[d.t_fake]
        x_t2 = torch.sqrt(_bc(ab2, x0)) * x0.detach() + torch.sqrt(1 - _bc(ab2, x0)) * d.noise_fake
        c2 = torch.where(d.drop.view(-1, 1, 1), null.expand_as(cond), cond)
        e = self._eps(self.fake, x_t2, d.t_fake, c2)
        w = torch.sqrt(_bc(ab2, e))
        loss_f = F.mse_loss(w * e, w * d.noise_fake)
        loss_f.backward()
        torch.nn.utils.clip_grad_norm_(self.p_fake, 1.0)
        self.opt_f.step()
        self.opt_f.zero_grad(set_to_none=True)
        return float(loss_s.detach()), float(loss_f.detach())


def _scaled_linear(n: int = 1000, b0: float = 0.00085, b1: float = 0.012) -> Tensor:
    betas = torch.linspace(b0**0.5, b1**0.5, n, dtype=torch.float64) ** 2
    return torch.cumprod(1 - betas, 0)
