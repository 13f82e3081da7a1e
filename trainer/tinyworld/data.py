"""Training and evaluation data of the tiny world, as pure functions of (seed, stream, step).

No dataloader state: batch ``k`` of a stream is fully determined by ``(seed, stream, k)``,
so a resumed run sees exactly the batches an uninterrupted one would have seen.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from . import domain
from .domain import Scene, caption_scene, parse_caption, sample_scene, scene_from_spec

# Independent random streams (so e.g. the classifier never trains on the eval images).
STREAMS = {"vae": 1, "unet": 2, "classifier": 3, "bank": 4, "eval-real": 5, "eval-ref": 6, "eval-noise": 7}


def _stream_id(stream: str) -> int:
    if stream not in STREAMS:
        raise KeyError(f"unknown data stream {stream!r}; expected one of {tuple(STREAMS)}")
    return STREAMS[stream]


def step_seed(seed: int, stream: str, step: int) -> int:
    """A 62-bit seed mixing ``(seed, stream, step)`` (numpy's SeedSequence does the hashing)."""
    return int(np.random.SeedSequence([seed, _stream_id(stream), step]).generate_state(2, np.uint32).view(np.uint64)[0] >> 2)


def step_generator(seed: int, stream: str, step: int) -> torch.Generator:
    return torch.Generator().manual_seed(step_seed(seed, stream, step))


def images_to_tensor(images: Sequence[np.ndarray]) -> Tensor:
    """HxWx3 [0,1] arrays -> Nx3xHxW float32 tensor in [0, 1]."""
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()


def render_scenes(scenes: Sequence[Scene], seeds: Sequence[int], size: int = 32) -> Tensor:
    """Nx3xHxW float32 in [0, 1] (the vectorised batch renderer)."""
    return torch.from_numpy(domain.render_scenes(list(scenes), [int(z) for z in seeds], size)).permute(0, 3, 1, 2).contiguous()


def random_scenes(seed: int, stream: str, step: int, n: int) -> tuple[list[Scene], list[int]]:
    """``n`` random scenes and their render seeds for one batch."""
    rng = random.Random(step_seed(seed, stream, step))
    scenes = [sample_scene(rng) for _ in range(n)]
    return scenes, [rng.getrandbits(62) for _ in range(n)]


def real_batch(seed: int, stream: str, step: int, n: int, size: int = 32) -> tuple[Tensor, list[Scene]]:
    """A batch of rendered scenes, ``[n, 3, size, size]`` in [0, 1], with their ground truth."""
    scenes, seeds = random_scenes(seed, stream, step, n)
    return render_scenes(scenes, seeds, size), scenes


def captions_for(scenes: Sequence[Scene], seed: int, stream: str, step: int, drop_prob: float = 0.0) -> list[str]:
    """One random true caption per scene; with probability ``drop_prob`` the empty (null) prompt.

    The null prompt is what classifier-free guidance contrasts against, as in SD training.
    """
    rng = random.Random(step_seed(seed, stream, step) ^ 0x5EED)
    out = []
    for s in scenes:
        text = caption_scene(s, rng)
        out.append("" if rng.random() < drop_prob else text)
    return out


def render_prompts(prompts: Sequence[str], seed: int, size: int = 32) -> Tensor:
    """Real images for ``prompts``: image i is ``render(prompts[i])`` with a seed from ``(seed, i)``.

    Unsaid attributes are drawn from the seed, i.e. from the same conditional
    distribution a perfect generator would sample.
    """
    seeds = [step_seed(seed, "eval-real", i) for i in range(len(prompts))]
    scenes = [scene_from_spec(parse_caption(p), random.Random(z)) for p, z in zip(prompts, seeds)]
    return render_scenes(scenes, seeds, size)


# -- prefetching (batches are pure functions of the step, so workers can make them in any order) ----
class _StepBatches(torch.utils.data.Dataset):
    def __init__(self, make: Callable[[int], Any], start: int, total: int) -> None:
        self.make, self.start, self.total = make, start, total

    def __len__(self) -> int:
        return self.total - self.start

    def __getitem__(self, i: int) -> Any:
        return self.make(self.start + i)


def step_batches(make: Callable[[int], Any], start: int, total: int, workers: int = 0) -> Iterator[Any]:
    """``make(step)`` for ``step`` in ``[start, total)``, in order; ``workers`` > 0 renders ahead in subprocesses."""
    if workers <= 0:
        return (make(s) for s in range(start, total))
    loader = torch.utils.data.DataLoader(
        _StepBatches(make, start, total), batch_size=None, shuffle=False, num_workers=workers, prefetch_factor=4
    )
    return iter(loader)


def vae_batch(seed: int, batch: int, step: int) -> Tensor:
    """Images in [-1, 1] for VAE step ``step``."""
    return real_batch(seed, "vae", step, batch)[0] * 2 - 1


class CaptionedImages(torch.utils.data.Dataset):
    """``n`` captioned renders, item ``i`` a pure function of ``(seed, i)``: ``{"image", "caption", "scene"}``.

    ``image`` is 3xHxW in [0, 1]; the caption is one random true description of the
    scene (so e.g. the relation learner sees "left of" and "right of" phrasings).
    """

    def __init__(self, n: int, seed: int = 0, size: int = 32, stream: str = "unet") -> None:
        self.n, self.seed, self.size, self.stream = n, seed, size, stream

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict[str, Any]:
        if not 0 <= i < self.n:
            raise IndexError(f"index {i} out of range for {self.n} items")
        rng = random.Random(step_seed(self.seed, self.stream, i))
        scene = sample_scene(rng)
        image = render_scenes([scene], [rng.getrandbits(62)], self.size)[0]
        return {"image": image, "caption": caption_scene(scene, rng), "scene": scene}
