"""The tiny world: procedural captioned scenes of coloured shapes, deterministic by seed.

A scene holds one object (placed at a named position) or two objects side by side
or stacked (so "left of" / "above" relations are well defined).  Captions describe
a random *subset* of a scene's attributes from templates, so the same caption fits
many images: conditioning narrows the distribution, classifier-free guidance has
something to sharpen, and the unmentioned attributes keep the data diverse.

Everything is pure numpy/python; ``random.Random`` / ``numpy`` generators seeded by
the caller make every sample reproducible.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np

# -- vocabulary of the world ---------------------------------------------------------------
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "cross")
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "orange": (245, 140, 20),
    "yellow": (235, 215, 35),
    "green": (40, 165, 60),
    "cyan": (40, 200, 215),
    "blue": (45, 75, 225),
    "purple": (135, 55, 190),
    "pink": (245, 125, 190),
}
# Disjoint from the object colours, so an object never vanishes into its background.
BACKGROUNDS: dict[str, tuple[int, int, int]] = {"black": (15, 15, 15), "gray": (128, 128, 128), "white": (240, 240, 240)}
SIZES: tuple[str, ...] = ("small", "large")
POSITIONS: tuple[str, ...] = ("center", "left", "right", "top", "bottom")  # one object
AXES: tuple[str, ...] = ("horizontal", "vertical")  # two objects: objects[0] is left / top
LAYOUTS: tuple[str, ...] = POSITIONS + AXES

SIZE_WORDS: dict[str, tuple[str, ...]] = {"small": ("small", "little"), "large": ("large", "big")}
POSITION_PHRASES: dict[str, str] = {
    "center": "in the center",
    "left": "on the left",
    "right": "on the right",
    "top": "at the top",
    "bottom": "at the bottom",
}
PREFIXES: tuple[str, ...] = ("an image of", "a picture of")
GENERIC_SHAPE = "shape"  # "a red shape": the shape left unsaid

# Geometry in units of the image side (so any resolution renders the same scene).
_RADIUS = {"small": 0.14, "large": 0.22}
_RADIUS_JITTER = 0.015
_POS_CENTER = {"center": (0.5, 0.5), "left": (0.27, 0.5), "right": (0.73, 0.5), "top": (0.5, 0.27), "bottom": (0.5, 0.73)}
_POS_JITTER = 0.04
_PAIR_ALONG, _PAIR_ACROSS = 0.26, 0.5  # first object's centre along / across the axis
_PAIR_JITTER_ALONG, _PAIR_JITTER_ACROSS = 0.02, 0.12
_COLOR_JITTER, _BG_JITTER = 12, 8


@dataclass(frozen=True)
class Obj:
    shape: str
    color: str
    size: str


@dataclass(frozen=True)
class Scene:
    """Discrete content of an image; ``render`` adds the continuous jitter."""

    objects: tuple[Obj, ...]  # 1 or 2; with 2, objects[0] is the left (horizontal) or top (vertical) one
    layout: str  # a POSITIONS entry for one object, an AXES entry for two
    background: str

    def __post_init__(self) -> None:
        n = len(self.objects)
        if n not in (1, 2):
            raise ValueError(f"Scene needs 1 or 2 objects, got {n}")
        allowed = POSITIONS if n == 1 else AXES
        if self.layout not in allowed:
            raise ValueError(f"Scene.layout {self.layout!r} invalid for {n} object(s); expected one of {allowed}")
        if self.background not in BACKGROUNDS:
            raise ValueError(f"Scene.background {self.background!r}; expected one of {tuple(BACKGROUNDS)}")
        for o in self.objects:
            if o.shape not in SHAPES or o.color not in COLORS or o.size not in SIZES:
                raise ValueError(f"invalid object {o}; shapes {SHAPES}, colours {tuple(COLORS)}, sizes {SIZES}")


# -- partial descriptions (what a caption pins down) ---------------------------------------
@dataclass(frozen=True)
class ObjSpec:
    shape: str | None = None
    color: str | None = None
    size: str | None = None

    def matches(self, o: Obj) -> bool:
        return all(v is None or v == getattr(o, k) for k, v in (("shape", self.shape), ("color", self.color), ("size", self.size)))


@dataclass(frozen=True)
class Spec:
    """What a caption says. ``relation``: None (one object), an AXES entry (objects in
    canonical left/top-first order), or "any" (``A and B``: either order, either axis)."""

    objects: tuple[ObjSpec, ...]
    relation: str | None = None
    position: str | None = None
    background: str | None = None


def _rand_obj(rng: random.Random) -> Obj:
    return Obj(rng.choice(SHAPES), rng.choice(tuple(COLORS)), rng.choice(SIZES))


def _fill(spec: ObjSpec, rng: random.Random) -> Obj:
    o = _rand_obj(rng)
    return Obj(spec.shape or o.shape, spec.color or o.color, spec.size or o.size)


def sample_scene(rng: random.Random) -> Scene:
    """A uniformly random scene: half one object, half two distinct objects."""
    bg = rng.choice(tuple(BACKGROUNDS))
    if rng.random() < 0.5:
        return Scene((_rand_obj(rng),), rng.choice(POSITIONS), bg)
    a = _rand_obj(rng)
    b = _rand_obj(rng)
    while (b.shape, b.color) == (a.shape, a.color):  # keep the two objects distinguishable
        b = _rand_obj(rng)
    return Scene((a, b), rng.choice(AXES), bg)


def scene_from_spec(spec: Spec, rng: random.Random) -> Scene:
    """A random scene satisfying ``spec`` (unsaid attributes drawn uniformly)."""
    bg = spec.background or rng.choice(tuple(BACKGROUNDS))
    if len(spec.objects) == 1:
        return Scene((_fill(spec.objects[0], rng),), spec.position or rng.choice(POSITIONS), bg)
    a, b = (_fill(s, rng) for s in spec.objects)
    for _ in range(100):  # redraw the unsaid attributes until the objects differ
        if (a.shape, a.color) != (b.shape, b.color):
            break
        b = _fill(spec.objects[1], rng)
    if spec.relation == "any":
        axis = rng.choice(AXES)
        objs = (a, b) if rng.random() < 0.5 else (b, a)
    else:
        axis, objs = spec.relation, (a, b)
    return Scene(objs, axis, bg)


def spec_matches(spec: Spec, scene: Scene) -> bool:
    """True when ``scene`` has everything ``spec`` says (the alignment criterion)."""
    if spec.background is not None and spec.background != scene.background:
        return False
    if len(spec.objects) != len(scene.objects):
        return False
    if len(spec.objects) == 1:
        return (spec.position is None or spec.position == scene.layout) and spec.objects[0].matches(scene.objects[0])
    s0, s1 = spec.objects
    o0, o1 = scene.objects
    if spec.relation == "any":
        return (s0.matches(o0) and s1.matches(o1)) or (s0.matches(o1) and s1.matches(o0))
    return spec.relation == scene.layout and s0.matches(o0) and s1.matches(o1)


# -- captions ---------------------------------------------------------------------------------
def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _object_phrase(o: Obj, rng: random.Random) -> str:
    words = []
    if rng.random() < 0.5:
        words.append(rng.choice(SIZE_WORDS[o.size]))
    say_color, say_shape = rng.random() < 0.9, rng.random() < 0.9
    if not (say_color or say_shape):
        say_shape = True
    if say_color:
        words.append(o.color)
    words.append(o.shape if say_shape else GENERIC_SHAPE)
    return f"{_article(words[0])} {' '.join(words)}"


def caption_scene(scene: Scene, rng: random.Random) -> str:
    """One random true caption of ``scene`` (a random subset of its attributes)."""
    objs = scene.objects
    if len(objs) == 1:
        text = _object_phrase(objs[0], rng)
        if rng.random() < 0.6:
            text += " " + POSITION_PHRASES[scene.layout]
    elif rng.random() < 0.15:  # no relation said: "a X and a Y", either order
        first, second = (objs[0], objs[1]) if rng.random() < 0.5 else (objs[1], objs[0])
        text = f"{_object_phrase(first, rng)} and {_object_phrase(second, rng)}"
    else:
        forward = rng.random() < 0.5  # "first REL second" or the mirrored phrasing
        if scene.layout == "horizontal":
            rel = rng.choice(("left of", "to the left of")) if forward else rng.choice(("right of", "to the right of"))
        else:
            rel = "above" if forward else "below"
        a, b = (objs[0], objs[1]) if forward else (objs[1], objs[0])
        text = f"{_object_phrase(a, rng)} {rel} {_object_phrase(b, rng)}"
    if rng.random() < 0.4:
        text += f" on {_article(scene.background)} {scene.background} background"
    if rng.random() < 0.15:
        text = f"{rng.choice(PREFIXES)} {text}"
    return text


def sample_captions(n: int, seed: int = 0) -> list[str]:
    """``n`` captions of random scenes, deterministic in ``seed``."""
    rng = random.Random(seed)
    return [caption_scene(sample_scene(rng), rng) for _ in range(n)]


def caption_vocabulary() -> list[str]:
    """Every word any caption can contain (the tokenizer is built from this)."""
    words = {"a", "an", "of", "and", "on", "the", "in", "at", "to", "background", GENERIC_SHAPE}
    words |= set(SHAPES) | set(COLORS) | set(BACKGROUNDS)
    words |= {w for ws in SIZE_WORDS.values() for w in ws}
    words |= {w for p in POSITION_PHRASES.values() for w in p.split()}
    words |= {w for p in PREFIXES for w in p.split()}
    words |= {"left", "right", "above", "below"}
    return sorted(words)


# -- parsing (captions back to specs) ---------------------------------------------------------
class CaptionError(ValueError):
    """A caption outside the tiny world's grammar."""


_SIZE_OF = {w: s for s, ws in SIZE_WORDS.items() for w in ws}
_POSITION_OF = {tuple(p.split()): k for k, p in POSITION_PHRASES.items()}
# relation words -> (axis, whether the first-mentioned object is the canonical first one)
_RELATIONS = {
    ("left", "of"): ("horizontal", True),
    ("to", "the", "left", "of"): ("horizontal", True),
    ("right", "of"): ("horizontal", False),
    ("to", "the", "right", "of"): ("horizontal", False),
    ("above",): ("vertical", True),
    ("below",): ("vertical", False),
    ("and",): ("any", True),
}


def parse_caption(caption: str) -> Spec:
    """Invert ``caption_scene``: the :class:`Spec` a caption pins down.

    Raises :class:`CaptionError` (naming the caption and the offending word) for text
    outside the grammar, so a typo in a prompt file fails loudly instead of scoring 0.
    """
    words = caption.lower().replace(",", " ").replace(".", " ").split()
    pos = 0

    def fail(what: str) -> CaptionError:
        got = " ".join(words[pos:]) or "<end>"
        return CaptionError(f"caption {caption!r}: expected {what} at word {pos + 1} ({got!r})")

    def take(seq: tuple[str, ...]) -> bool:
        nonlocal pos
        if tuple(words[pos : pos + len(seq)]) == seq:
            pos += len(seq)
            return True
        return False

    def object_spec() -> ObjSpec:
        nonlocal pos
        if not (take(("a",)) or take(("an",))):
            raise fail("'a' or 'an'")
        size = color = shape = None
        if pos < len(words) and words[pos] in _SIZE_OF:
            size, pos = _SIZE_OF[words[pos]], pos + 1
        if pos < len(words) and words[pos] in COLORS:
            color, pos = words[pos], pos + 1
        if pos < len(words) and (words[pos] in SHAPES or words[pos] == GENERIC_SHAPE):
            shape = None if words[pos] == GENERIC_SHAPE else words[pos]
            pos += 1
        else:
            raise fail(f"a shape word {SHAPES + (GENERIC_SHAPE,)}")
        return ObjSpec(shape, color, size)

    for prefix in PREFIXES:
        if take(tuple(prefix.split())):
            break
    objects = [object_spec()]
    relation = position = background = None
    for rel_words, (axis, first_is_canonical) in sorted(_RELATIONS.items(), key=lambda kv: -len(kv[0])):
        if take(rel_words):
            other = object_spec()
            relation = axis
            objects = [objects[0], other] if first_is_canonical else [other, objects[0]]
            break
    if relation is None:
        for phrase, name in _POSITION_OF.items():
            if take(phrase):
                position = name
                break
    if take(("on",)):
        if not (take(("a",)) or take(("an",))) or pos >= len(words) or words[pos] not in BACKGROUNDS:
            raise fail(f"'a <colour> background' with a colour in {tuple(BACKGROUNDS)}")
        background, pos = words[pos], pos + 1
        if not take(("background",)):
            raise fail("'background'")
    if pos != len(words):
        raise fail("the end of the caption")
    return Spec(tuple(objects), relation, position, background)


# -- rendering ----------------------------------------------------------------------------------
def _sdf(shape: str, px: np.ndarray, py: np.ndarray, r: np.ndarray | float) -> np.ndarray:
    """Signed distance (image-side units, negative inside) to a shape centred at 0."""
    if shape == "circle":
        return np.hypot(px, py) - r
    if shape == "square":
        h = 0.85 * r  # equal-ish visual weight to the circle
        return np.maximum(np.abs(px), np.abs(py)) - h
    if shape == "cross":
        arm, half = r, 0.36 * r
        bar_h = np.maximum(np.abs(px) - arm, np.abs(py) - half)
        bar_v = np.maximum(np.abs(px) - half, np.abs(py) - arm)
        return np.minimum(bar_h, bar_v)
    if shape == "triangle":  # upright, apex up; max of the three edge half-planes
        top, base, half_w = -r, 0.8 * r, 0.95 * r
        d_base = py - base
        # Right edge: apex (0, top) to (half_w, base); outward normal (base - top, -half_w); |px| mirrors it.
        nx, ny = base - top, -half_w
        d_side = (np.abs(px) * nx + (py - top) * ny) / np.hypot(nx, ny)
        return np.maximum(d_base, d_side)
    raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")


def _centers(scene: Scene, radii: list[float], rng: np.random.Generator) -> list[tuple[float, float]]:
    if len(scene.objects) == 1:
        cx, cy = _POS_CENTER[scene.layout]
        r = radii[0]
        lo, hi = r + 0.02, 1 - r - 0.02
        cx = float(np.clip(cx + rng.uniform(-_POS_JITTER, _POS_JITTER), lo, hi))
        cy = float(np.clip(cy + rng.uniform(-_POS_JITTER, _POS_JITTER), lo, hi))
        return [(cx, cy)]
    out = []
    for i, r in enumerate(radii):
        along = (_PAIR_ALONG if i == 0 else 1 - _PAIR_ALONG) + rng.uniform(-_PAIR_JITTER_ALONG, _PAIR_JITTER_ALONG)
        across = _PAIR_ACROSS + rng.uniform(-_PAIR_JITTER_ACROSS, _PAIR_JITTER_ACROSS)
        along = float(np.clip(along, r + 0.02, 1 - r - 0.02))
        across = float(np.clip(across, r + 0.02, 1 - r - 0.02))
        out.append((along, across) if scene.layout == "horizontal" else (across, along))
    return out


def _scene_params(scene: Scene, seed: int) -> tuple[np.ndarray, list[tuple[int, float, float, float, np.ndarray]]]:
    """The continuous draws of one rendering: background tint, then radii, centres, object tints."""
    rng = np.random.default_rng(seed)
    bg = np.asarray(BACKGROUNDS[scene.background], np.float32) + rng.uniform(-_BG_JITTER, _BG_JITTER, 3)
    radii = [_RADIUS[o.size] + rng.uniform(-_RADIUS_JITTER, _RADIUS_JITTER) for o in scene.objects]
    centers = _centers(scene, radii, rng)
    objs = []
    for o, r, (cx, cy) in zip(scene.objects, radii, centers):
        color = np.asarray(COLORS[o.color], np.float32) + rng.uniform(-_COLOR_JITTER, _COLOR_JITTER, 3)
        objs.append((SHAPES.index(o.shape), cx, cy, r, color))
    return bg, objs


def render_scenes(scenes: list[Scene], seeds: list[int], size: int = 32) -> np.ndarray:
    """Batch renderer: N x H x W x 3 float32 in [0, 1], vectorised over the batch (one SDF pass per shape)."""
    n = len(scenes)
    params = [_scene_params(s, int(z)) for s, z in zip(scenes, seeds)]
    coords = (np.arange(size, dtype=np.float32) + 0.5) / size
    gx, gy = np.meshgrid(coords, coords)  # gx varies along columns (x), gy along rows (y, down)
    img = np.broadcast_to(np.stack([p[0] for p in params])[:, None, None, :], (n, size, size, 3)).copy()
    for slot in (0, 1):
        rows = [i for i, p in enumerate(params) if len(p[1]) > slot]
        if not rows:
            continue
        shape, cx, cy, r, color = (np.asarray(v) for v in zip(*(params[i][1][slot] for i in rows)))
        px, py = gx[None] - cx[:, None, None], gy[None] - cy[:, None, None]
        dist = np.empty_like(px)
        for k, name in enumerate(SHAPES):
            sel = shape == k
            if sel.any():
                dist[sel] = _sdf(name, px[sel], py[sel], r[sel][:, None, None])
        # Coverage from the signed distance in pixels: a one-pixel linear ramp across the edge.
        cover = np.clip(0.5 - dist * size, 0.0, 1.0)[..., None]
        img[rows] = img[rows] * (1 - cover) + color[:, None, None, :] * cover
    return np.clip(img / 255.0, 0.0, 1.0).astype(np.float32)


def render_scene(scene: Scene, seed: int = 0, size: int = 32) -> np.ndarray:
    """Anti-aliased HxWx3 float32 image in [0, 1]; the seed drives positions, radii and tints."""
    return render_scenes([scene], [seed], size)[0]


def render(what: str | Scene | Spec, seed: int = 0, size: int = 32) -> np.ndarray:
    """Render a caption, a :class:`Spec` or a :class:`Scene`; unsaid attributes come from ``seed``."""
    if isinstance(what, str):
        what = parse_caption(what)
    if isinstance(what, Spec):
        what = scene_from_spec(what, random.Random(seed))
    return render_scene(what, seed=seed, size=size)
