"""Teacher pairs and the regression term: DMD's second loss, an option beyond the WaDi paper.

With ``vsd.regression_weight`` > 0 the student's loss gains
``weight * MSE(G(z_i), x_teacher(z_i))``: the one-step output for a fixed noise ``z_i`` pulled
towards what the frozen teacher draws from the same noise with its ordinary multi-step sampler
(DDIM, ``vsd.regression_steps`` steps, CFG ``vsd.guidance_scale``).  The pairs are drawn once
before training, from their own seeded generator, and cached on disk under a name that holds
everything they depend on, so a resumed run (or another run on the same teacher and prompts)
reuses them instead of sampling the teacher again; they do not depend on the training seed.

Why (measured on the tiny world, docs/quality-study.md): the VSD-only student levels off at
an FD of about 620; the same LoRaD student trained on this regression alone reaches about 505 in
1500 steps.  DMD (Yin et al., 2024) pairs the two losses for the same reason: the distribution
loss alone leaves residue the teacher's own trajectories do not have.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from ..lorad.fsutil import atomic_write_bytes
from .backbones import TextCond

__all__ = ["Pairs", "PairBatch", "pairs_identity", "make_pairs", "load_or_make_pairs", "regression_loss",
           "regression_weight_at", "PAIR_SEED"]

# The pairs are data, like the prompt file: every run on the same teacher and prompts draws the
# same ones (from this seed), whatever its training seed, so runs that differ only in their seed
# share one cached set and differ only in what the seed drives (initialisation, batches, noise).
PAIR_SEED = 7919


@dataclass
class Pairs:
    """``n`` fixed (prompt, noise, teacher output) triples."""

    prompt_idx: Tensor  # [N] long, indices into the run's prompt table
    z: Tensor  # [N, C, H, W] the generator's input noise
    x0: Tensor  # [N, C, H, W] the teacher's multi-step latent from z

    def __len__(self) -> int:
        return int(self.prompt_idx.shape[0])


@dataclass
class PairBatch:
    """One micro-batch of pairs, on the training device, with its text features."""

    z: Tensor
    x0: Tensor
    cond: TextCond


def pairs_identity(base_fingerprint: str, prompts: list[str], n: int, steps: int, guidance: float, seed: int,
                   latent: tuple[int, ...]) -> str:
    """A short digest of everything the pairs depend on (it names the cache file)."""
    spec = {"base": base_fingerprint, "prompts": hashlib.sha256("\n".join(prompts).encode()).hexdigest(),
            "n": n, "steps": steps, "guidance": guidance, "seed": seed, "latent": list(latent)}
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


@torch.no_grad()
def make_pairs(sample: Callable[[Tensor, Tensor], Tensor], n: int, n_prompts: int, latent: tuple[int, ...],
               seed: int, batch: int = 64, progress: Callable[[int, int], None] | None = None) -> Pairs:
    """Draw ``n`` (prompt, noise) pairs from ``seed`` and run ``sample(prompt_idx, z) -> x0`` on them in batches."""
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, n_prompts, (n,), generator=gen)
    z = torch.randn(n, *latent, generator=gen)
    out = []
    for start in range(0, n, batch):
        out.append(sample(idx[start: start + batch], z[start: start + batch]).float().cpu())
        if progress is not None:
            progress(min(start + batch, n), n)
    return Pairs(idx, z, torch.cat(out))


def load_or_make_pairs(path: Path, make: Callable[[], Pairs], log=print) -> Pairs:
    """The pairs cached at ``path`` (its name carries :func:`pairs_identity`), else ``make()`` and cache them."""
    from safetensors.torch import load_file, save

    if path.is_file():
        try:
            t = load_file(str(path))
            pairs = Pairs(t["prompt_idx"], t["z"], t["x0"])
            log(f"regression pairs: {len(pairs)} from {path.name}")
            return pairs
        except Exception as e:  # a torn or foreign file: sample again rather than stop the run
            log(f"warning: regression pairs cache {path} unreadable ({e}); sampling them again")
    pairs = make()
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, save({"prompt_idx": pairs.prompt_idx.contiguous(), "z": pairs.z.contiguous(),
                                   "x0": pairs.x0.contiguous()}))
    return pairs


def regression_loss(x0: Tensor, target: Tensor) -> Tensor:
    """Mean squared error in latent space between the one-step output and the teacher's."""
    return F.mse_loss(x0.float(), target.float(), reduction="mean")


def regression_weight_at(weight: float, ramp: str, step: int, max_steps: int) -> float:
    """The regression term's weight for optimizer step ``step`` (0-based) of ``max_steps``.

    ``"constant"``: ``weight`` throughout.  ``"up"``: ``weight * (step + 1) / max_steps``, so the
    first step gets ``weight / max_steps`` and the last the full ``weight``.  ``"down"``:
    ``weight * (max_steps - step) / max_steps``, the full ``weight`` first and ``weight / max_steps``
    last.  A pure function of the step, so a resumed run continues the ramp exactly.
    """
    if ramp == "constant":
        return weight
    k = min(step, max_steps - 1)
    if ramp == "up":
        return weight * (k + 1) / max_steps
    if ramp == "down":
        return weight * (max_steps - k) / max_steps
    raise ValueError(f"vsd.regression_ramp: expected 'constant', 'up' or 'down', got {ramp!r}")
