"""Tiny-world test beds for personalization and relation inversion, with classifier-based scores.

* **A personal concept.**  "a sks shape" means one specific object the domain can draw
  (:data:`CONCEPT`: a large pink cross).  :func:`write_concept_folder` renders instance images
  with ``.txt`` captions that never name its shape, colour or size; :func:`concept_scores`
  tells from the tiny world's classifier whether generated images show it.
* **A relation.**  :func:`write_relation_folder` renders two-object scenes in one relation
  ("left of") captioned ``"a red circle <R> a blue square"``, i.e. without the relation
  word; :func:`relation_scores` checks that images for ``"X <R> Y"`` show X left of Y.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .domain import (
    BACKGROUNDS,
    COLORS,
    POSITION_PHRASES,
    POSITIONS,
    SHAPES,
    Obj,
    Scene,
    parse_caption,
    render_scene,
    spec_matches,
)

__all__ = ["CONCEPT", "IDENTIFIER", "CLASS_NOUN", "concept_caption", "write_concept_folder", "concept_prompts",
           "expand_concept", "concept_scores", "RelationPrompt", "write_relation_folder", "relation_prompts",
           "relation_scores", "save_png"]

CONCEPT = Obj("cross", "pink", "large")
IDENTIFIER = "sks"
CLASS_NOUN = "shape"  # "a shape": the class prompt of prior preservation


def save_png(image: np.ndarray, path: Path) -> None:
    from PIL import Image

    Image.fromarray((np.clip(image, 0, 1) * 255).round().astype(np.uint8)).save(path)


def concept_caption(position: str | None, background: str | None) -> str:
    text = f"a {IDENTIFIER} {CLASS_NOUN}"
    if position:
        text += " " + POSITION_PHRASES[position]
    if background:
        text += f" on a {background} background"
    return text


def write_concept_folder(folder: str | Path, n: int = 8, seed: int = 0) -> Path:
    """``n`` renders of :data:`CONCEPT` in random places and backgrounds, each with a ``.txt`` caption."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    for i in range(n):
        pos, bg = rng.choice(POSITIONS), rng.choice(tuple(BACKGROUNDS))
        save_png(render_scene(Scene((CONCEPT,), pos, bg), seed=rng.getrandbits(31)), folder / f"{i:03d}.png")
        caption = concept_caption(pos if rng.random() < 0.7 else None, bg if rng.random() < 0.7 else None)
        (folder / f"{i:03d}.txt").write_text(caption + "\n", encoding="utf-8")
    return folder


def concept_prompts(n: int, seed: int = 1) -> list[str]:
    """Evaluation prompts for the concept: the bare prompt and variants with a position / background."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        pos = rng.choice(POSITIONS) if i % 3 else None
        bg = rng.choice(tuple(BACKGROUNDS)) if i % 2 else None
        out.append(concept_caption(pos, bg))
    return out


def expand_concept(prompt: str) -> str:
    """The same prompt in the domain's own words ("a sks shape" -> "a large pink cross")."""
    return prompt.replace(f"{IDENTIFIER} {CLASS_NOUN}", f"{CONCEPT.size} {CONCEPT.color} {CONCEPT.shape}")


def _scenes(images: Tensor) -> list[Scene]:
    from .metrics import classify

    return classify(images)[1]


def concept_scores(images: Tensor, prompts: Sequence[str]) -> dict[str, float]:
    """``concept``: one object that is the concept (shape, colour and size); ``prompt``: the whole
    expanded prompt holds (position, background too); plus per-attribute rates."""
    scenes = _scenes(images)
    hits = {"concept": 0, "prompt": 0, "shape": 0, "color": 0, "size": 0}
    for p, s in zip(prompts, scenes):
        one = len(s.objects) == 1
        o = s.objects[0] if one else None
        hits["concept"] += int(one and o == CONCEPT)
        hits["prompt"] += int(spec_matches(parse_caption(expand_concept(p)), s))
        for k in ("shape", "color", "size"):
            hits[k] += int(one and getattr(o, k) == getattr(CONCEPT, k))
    return {k: v / len(prompts) for k, v in hits.items()}


# -- relations -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RelationPrompt:
    text: str
    first: Obj  # X of "X <R> Y" (colour and shape said; size left open)
    second: Obj


def _pair(rng: random.Random) -> tuple[Obj, Obj]:
    a = Obj(rng.choice(SHAPES), rng.choice(tuple(COLORS)), rng.choice(("small", "large")))
    while True:  # distinct colour AND shape, so the order is readable from either attribute
        b = Obj(rng.choice(SHAPES), rng.choice(tuple(COLORS)), rng.choice(("small", "large")))
        if b.shape != a.shape and b.color != a.color:
            return a, b


def _phrase(o: Obj) -> str:
    return f"a {o.color} {o.shape}"


def write_relation_folder(folder: str | Path, n: int = 10, seed: int = 0, token: str = "<R>",
                          layout: str = "horizontal") -> Path:
    """``n`` scenes of two objects in ``layout`` (first = left / top), captioned ``"X <token> Y"``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    for i in range(n):
        a, b = _pair(rng)
        bg = rng.choice(tuple(BACKGROUNDS))
        save_png(render_scene(Scene((a, b), layout, bg), seed=rng.getrandbits(31)), folder / f"{i:03d}.png")
        text = f"{_phrase(a)} {token} {_phrase(b)}" + (f" on a {bg} background" if rng.random() < 0.5 else "")
        (folder / f"{i:03d}.txt").write_text(text + "\n", encoding="utf-8")
    return folder


def relation_prompts(n: int, seed: int = 1, relation: str = "<R>") -> list[RelationPrompt]:
    """``n`` prompts ``"a C1 S1 <relation> a C2 S2"`` with new random pairs (distinct colours and shapes)."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        a, b = _pair(rng)
        out.append(RelationPrompt(f"{_phrase(a)} {relation} {_phrase(b)}", a, b))
    return out


def _match(want: Obj, got: Obj) -> int:
    return int(want.color == got.color) + int(want.shape == got.shape)


def relation_scores(images: Tensor, prompts: Sequence[RelationPrompt], layout: str = "horizontal") -> dict[str, float]:
    """Fractions of the images: ``axis`` - two objects side by side (``layout``); ``decided`` - that, and
    the colour+shape pairing with X, Y is not a tie (which object is X can be told); ``order`` - that,
    with X first (left / top); ``exact`` - X first with both objects' colour and shape right.
    ``order_of_decided`` = order / decided: 0.5 is chance, 1.0 always X first, 0.0 always Y first."""
    scenes = _scenes(images)
    axis = decided = order = exact = 0
    for p, s in zip(prompts, scenes):
        if len(s.objects) != 2 or s.layout != layout:
            continue
        axis += 1
        o0, o1 = s.objects
        forward, backward = _match(p.first, o0) + _match(p.second, o1), _match(p.first, o1) + _match(p.second, o0)
        decided += int(forward != backward)
        order += int(forward > backward)
        exact += int(_match(p.first, o0) == 2 and _match(p.second, o1) == 2)
    n = len(prompts)
    return {"axis": axis / n, "decided": decided / n, "order": order / n, "exact": exact / n,
            "order_of_decided": order / decided if decided else float("nan")}


def images_to_tensor(images: Sequence[np.ndarray]) -> Tensor:
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()
