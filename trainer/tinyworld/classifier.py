"""The tiny world's attribute classifier: its "CLIP" (alignment) and its "Inception" (FD features).

A small CNN reads a 32x32 image and predicts the full discrete scene: layout (one of
5 positions for one object, or horizontal/vertical for two), background, and colour /
shape / size of each object slot (slot 0 = the single object, or the left/top one).
Its flattened feature map keeps *where* things are, which the relation heads need.
The 128-d penultimate activations are the features the Frechet distance is computed on.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .domain import AXES, BACKGROUNDS, COLORS, LAYOUTS, SHAPES, SIZES, Obj, Scene

FEATURE_DIM = 128
HEADS: dict[str, tuple[str, ...]] = {
    "layout": LAYOUTS,
    "background": tuple(BACKGROUNDS),
    "color0": tuple(COLORS),
    "shape0": SHAPES,
    "size0": SIZES,
    "color1": tuple(COLORS),
    "shape1": SHAPES,
    "size1": SIZES,
}
_BLUR_SIGMAS = (0.0, 0.5, 0.8, 1.2)


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1), nn.GroupNorm(8, cout), nn.SiLU(),
        nn.Conv2d(cout, cout, 3, padding=1), nn.GroupNorm(8, cout), nn.SiLU(),
    )  # fmt: skip


class AttributeClassifier(nn.Module):
    """Images in [0, 1] (N x 3 x 32 x 32) -> logits per attribute head, and 128-d features."""

    def __init__(self, width: int = 16, image_size: int = 32) -> None:
        super().__init__()
        self.image_size = image_size
        w = width
        # One cheap conv at full resolution (edges), the double blocks at 16x16 and 8x8.
        self.stem = nn.Sequential(
            nn.Conv2d(3, w, 3, padding=1), nn.GroupNorm(8, w), nn.SiLU(), nn.MaxPool2d(2),  # 16
            _block(w, 2 * w), nn.MaxPool2d(2),  # 8
            _block(2 * w, 4 * w), nn.MaxPool2d(2),  # 4
        )  # fmt: skip
        flat = 4 * w * (image_size // 8) ** 2
        self.embed = nn.Sequential(nn.Flatten(), nn.Linear(flat, 256), nn.SiLU(), nn.Linear(256, FEATURE_DIM), nn.SiLU())
        self.heads = nn.ModuleDict({k: nn.Linear(FEATURE_DIM, len(v)) for k, v in HEADS.items()})

    def features(self, images: Tensor) -> Tensor:
        if images.shape[-1] != self.image_size or images.shape[-2] != self.image_size:
            images = F.interpolate(images, size=(self.image_size, self.image_size), mode="bilinear", antialias=True)
        return self.embed(self.stem(images * 2 - 1))

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        feats = self.features(images)
        return {k: head(feats) for k, head in self.heads.items()}


def scene_labels(scenes: list[Scene]) -> dict[str, Tensor]:
    """Target class indices per head; slot-1 heads are -1 (ignored) for one-object scenes."""
    out: dict[str, list[int]] = {k: [] for k in HEADS}
    for s in scenes:
        out["layout"].append(LAYOUTS.index(s.layout))
        out["background"].append(HEADS["background"].index(s.background))
        for slot in (0, 1):
            o = s.objects[slot] if slot < len(s.objects) else None
            out[f"color{slot}"].append(-1 if o is None else HEADS["color0"].index(o.color))
            out[f"shape{slot}"].append(-1 if o is None else SHAPES.index(o.shape))
            out[f"size{slot}"].append(-1 if o is None else SIZES.index(o.size))
    return {k: torch.tensor(v) for k, v in out.items()}


def logits_to_scenes(logits: dict[str, Tensor]) -> list[Scene]:
    """Arg-max decoding of every head into a (valid) :class:`Scene`."""
    idx = {k: v.argmax(-1).tolist() for k, v in logits.items()}
    scenes = []
    for i in range(len(idx["layout"])):
        layout = LAYOUTS[idx["layout"][i]]
        n = 2 if layout in AXES else 1
        objs = tuple(
            Obj(SHAPES[idx[f"shape{j}"][i]], HEADS["color0"][idx[f"color{j}"][i]], SIZES[idx[f"size{j}"][i]])
            for j in range(n)
        )
        scenes.append(Scene(objs, layout, HEADS["background"][idx["background"][i]]))
    return scenes


def classifier_loss(logits: dict[str, Tensor], labels: dict[str, Tensor]) -> Tensor:
    return sum(F.cross_entropy(logits[k], labels[k], ignore_index=-1) for k in HEADS)


def augment(images: Tensor, gen: torch.Generator) -> Tensor:
    """Blur and noise at random strengths, so decoded (slightly soft) generations read like renders.

    No colour or geometric jitter: colour, left/right and up/down ARE the labels.
    """
    n = images.shape[0]
    # Four blur strengths (none, 0.5, 0.8, 1.2 px), one depthwise conv per strength: cheap on CPU.
    level = torch.randint(0, len(_BLUR_SIGMAS), (n,), generator=gen)
    blurred = images.clone()
    for i, sigma in enumerate(_BLUR_SIGMAS):
        sel = (level == i).nonzero().flatten()
        if sigma == 0 or sel.numel() == 0:
            continue
        x = torch.arange(-2, 3, dtype=images.dtype)
        k = torch.exp(-(x**2) / (2 * sigma**2))
        k = k / k.sum()
        padded = F.pad(images[sel], (2, 2, 2, 2), mode="replicate")
        out = F.conv2d(padded, k.view(1, 1, 1, 5).repeat(3, 1, 1, 1), groups=3)
        blurred[sel] = F.conv2d(out, k.view(1, 1, 5, 1).repeat(3, 1, 1, 1), groups=3)
    noise_std = torch.rand(n, 1, 1, 1, generator=gen) * 0.06
    return (blurred + noise_std * torch.randn(blurred.shape, generator=gen)).clamp(0, 1)


def training_batch(seed: int, batch: int, step: int) -> tuple[Tensor, dict[str, Tensor]]:
    """Augmented renders and their labels for classifier step ``step`` (a pure function of the step)."""
    from .data import real_batch, step_generator

    x, scenes = real_batch(seed, "classifier", step, batch)
    return augment(x, step_generator(seed, "classifier", step)), scene_labels(scenes)


def cosine_lr(step: int, total: int, base: float, warmup: int, floor: float = 0.05) -> float:
    """Linear warm-up then cosine decay to ``floor * base``."""
    if step < warmup:
        return base * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return base * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))


def save_classifier(model: AttributeClassifier, path: Path, metadata: dict[str, str] | None = None) -> Path:
    from .io import save_safetensors

    meta = {"format": "wadi-tinyworld-classifier", "width": str(model.stem[0].out_channels)}
    meta["image_size"] = str(model.image_size)
    meta.update(metadata or {})
    return save_safetensors(Path(path), model.state_dict(), metadata=meta)


def load_classifier(path: Path) -> AttributeClassifier:
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"classifier weights not found: {path} (train them with `wadi pretrain --stage classifier`)")
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    if meta.get("format") != "wadi-tinyworld-classifier":
        raise ValueError(f"{path}: metadata 'format' is {meta.get('format')!r}, expected 'wadi-tinyworld-classifier'")
    model = AttributeClassifier(width=int(meta["width"]), image_size=int(meta["image_size"]))
    state = {k: v.float() for k, v in load_file(str(path)).items()}
    model.load_state_dict(state)
    return model.eval().requires_grad_(False)
