"""Optimizers, LR schedules and gradient handling for the two trained parts (student, fake).

Each part has its own AdamW, LR schedule, fp16 loss scaler and gradient clip
(1.0 per model in the paper).  Gradients are averaged across processes by one
flattened all-reduce per part (``accelerator.reduce``) instead of DDP: the one
base model runs three times per step under different adapter views, which DDP's
per-forward hooks do not model; an explicit reduce at the optimizer boundary
is exact and lets gradient accumulation skip communication for free.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from .config import OptimConfig

__all__ = ["make_optimizer", "make_lr_schedule", "sync_gradients", "clip_and_norm", "make_scaler"]


def make_optimizer(params: list, lr: float, cfg: OptimConfig, device: torch.device,
                   log=print) -> torch.optim.Optimizer:
    """AdamW (8-bit where asked and possible) over ``params``: parameters, or groups with an
    ``lr_scale`` (their lr is ``lr * lr_scale``)."""
    if params and isinstance(params[0], dict):
        params = [{"params": g["params"], "lr": lr * g.get("lr_scale", 1.0)} for g in params]
    if cfg.adam_8bit:
        if device.type == "cuda":
            try:
                import bitsandbytes as bnb  # optional; imported only when asked for

                return bnb.optim.AdamW8bit(params, lr=lr, betas=cfg.betas, eps=cfg.eps, weight_decay=cfg.weight_decay)
            except ImportError:
                log("note: optim.adam_8bit needs bitsandbytes (pip install bitsandbytes); using torch AdamW")
        else:
            log(f"note: optim.adam_8bit needs CUDA (device is {device.type}); using torch AdamW")
    return torch.optim.AdamW(params, lr=lr, betas=cfg.betas, eps=cfg.eps, weight_decay=cfg.weight_decay)


def make_lr_schedule(opt: torch.optim.Optimizer, cfg: OptimConfig, total_steps: int) -> LambdaLR:
    """diffusers' schedule ``cfg.lr_scheduler`` after ``cfg.warmup_steps`` of linear warm-up from 0.

    A ``LambdaLR`` like before the switch to diffusers, so checkpoints keep loading; a run without
    warm-up (every preset) gets the same rates, with warm-up the ramp now starts at 0 instead of
    1/warmup_steps (diffusers' and transformers' convention).
    """
    from diffusers.optimization import get_scheduler

    warm = max(0, cfg.warmup_steps)
    name = "constant_with_warmup" if cfg.lr_scheduler == "constant" and warm else cfg.lr_scheduler
    return get_scheduler(name, opt, num_warmup_steps=warm, num_training_steps=total_steps)


def make_scaler(mixed_precision: str, device: torch.device):
    """A loss scaler per part for fp16 (None otherwise): two optimizers stepping in turn on one
    shared scaler would unscale one part's gradients with the other part's updated scale."""
    if mixed_precision != "fp16":
        return None
    return torch.amp.GradScaler(device.type)


@torch.no_grad()
def sync_gradients(params: list[nn.Parameter], accelerator) -> None:
    """Average ``.grad`` over processes (no-op for one process)."""
    if accelerator is None or accelerator.num_processes == 1:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1).float() for g in grads])
    flat = accelerator.reduce(flat, reduction="mean")
    i = 0
    for p, g in zip(params, grads):
        n = g.numel()
        p.grad = flat[i: i + n].view_as(p).to(p.dtype)
        i += n


def clip_and_norm(params: list[nn.Parameter], max_norm: float) -> float:
    """Clip the total grad norm (if max_norm > 0) and return the norm before clipping."""
    grads = [p for p in params if p.grad is not None]
    if not grads:
        return 0.0
    if max_norm > 0:
        return float(torch.nn.utils.clip_grad_norm_(grads, max_norm))
    return float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in grads])))
