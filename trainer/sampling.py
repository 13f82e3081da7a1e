"""Image generation for validation grids, ``wadi sample`` and the demo.

The one-step path is :func:`lorad.onestep.generate` (shared with the ComfyUI
nodes); this module only binds a model view, text conditioning and CFG into the
``eps_fn(x_t, t)`` it takes.  The teacher's multi-step reference runs diffusers'
DDIM scheduler on eps from :meth:`Backbone.eps`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from ..lorad.onestep import DEFAULT_TIMESTEP, generate
from .backbones import Backbone, TextCond
from .vsd import cfg_eps

__all__ = ["seeded_noise", "eps_fn", "one_step", "teacher_multistep", "save_grid"]


def seeded_noise(seeds: Sequence[int], shape: Sequence[int]) -> Tensor:
    """One standard-normal latent per seed (CPU generator, so the same on every device)."""
    return torch.stack([torch.randn(*shape, generator=torch.Generator().manual_seed(int(s))) for s in seeds])


def eps_fn(backbone: Backbone, model: nn.Module, cond: TextCond, uncond: TextCond | None = None,
           guidance: float = 1.0):
    """Bind a view, its conditioning and CFG into ``eps(x_t, t)`` for :func:`generate`."""
    def call(x: Tensor, t: Tensor, c: TextCond) -> Tensor:
        return backbone.eps(model, x, t, c)

    def fn(x_t: Tensor, t: int) -> Tensor:
        tt = torch.full((x_t.shape[0],), int(t), device=x_t.device, dtype=torch.long)
        if uncond is None or guidance == 1.0:
            return call(x_t, tt, cond)
        return cfg_eps(call, x_t, tt, cond, uncond, guidance)

    return fn


@torch.no_grad()
def one_step(backbone: Backbone, model: nn.Module, cond: TextCond, noise: Tensor, alpha_bar_T: float,
             timestep: int = DEFAULT_TIMESTEP, uncond: TextCond | None = None, guidance: float = 1.0) -> Tensor:
    """Latents of a one-step generation (x0 at ``timestep`` with ``alpha_bar_T``)."""
    fn = eps_fn(backbone, model, cond, uncond, guidance)
    return generate(fn, noise, backbone.alphas_cumprod, timesteps=(timestep,), alpha_bar_first=alpha_bar_T)


@torch.no_grad()
def teacher_multistep(backbone: Backbone, model: nn.Module, cond: TextCond, uncond: TextCond, noise: Tensor,
                      steps: int = 25, guidance: float = 7.5, progress: bool = False) -> Tensor:
    """The base model's ordinary multi-step CFG sampling (DDIM on the model's schedule)."""
    from tqdm.auto import tqdm

    sched = backbone.multistep_scheduler(steps)
    fn = eps_fn(backbone, model, cond, uncond, guidance)
    x = noise * float(sched.init_noise_sigma)
    for t in tqdm(sched.timesteps, desc=f"teacher {steps}-step", disable=not progress, leave=False):
        e = fn(x, int(t))
        x = sched.step(e, t, x, return_dict=False)[0]
    return x


def save_grid(rows: Sequence[Tensor], labels: Sequence[str], path: Path, captions: Sequence[str] = (),
              min_cell: int = 96) -> Path:
    """Save image rows (each [N, 3, H, W] in [0, 1]) as one PNG with a label per row.

    Small images are enlarged (nearest) so tiny-world pictures stay visible.
    """
    from PIL import Image, ImageDraw

    n = max(r.shape[0] for r in rows)
    h, w = rows[0].shape[-2:]
    scale = max(1, -(-min_cell // max(h, w)))
    ch, cw = h * scale, w * scale
    label_w = 8 + 7 * max(len(s) for s in labels)
    cap_h = 14 if captions else 0
    grid = Image.new("RGB", (label_w + n * (cw + 2), cap_h + len(rows) * (ch + 2)), "white")
    draw = ImageDraw.Draw(grid)
    for j, cap in enumerate(captions[:n]):
        draw.text((label_w + j * (cw + 2), 1), cap[: max(1, cw // 6)], fill="black")
    for i, (row, lab) in enumerate(zip(rows, labels)):
        y = cap_h + i * (ch + 2)
        draw.text((4, y + ch // 2 - 6), lab, fill="black")
        imgs = (row.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
        for j, arr in enumerate(imgs):
            im = Image.fromarray(arr).resize((cw, ch), Image.NEAREST)
            grid.paste(im, (label_w + j * (cw + 2), y))
    path.parent.mkdir(parents=True, exist_ok=True)
    from ..lorad.fsutil import atomic_save

    atomic_save(path, lambda tmp: grid.save(tmp, format="PNG"))
    return path
