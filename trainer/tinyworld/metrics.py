"""Tiny-world metrics: prompt alignment (its CLIP score) and Frechet distance (its FID).

Both read the shipped attribute classifier (``assets/tinyworld/classifier.safetensors``):

* **alignment**: the fraction of images whose predicted scene has everything the
  prompt says (count, colours, shapes, sizes, relation/position, background);
  per-attribute accuracies come along for diagnosis;
* **fd**: the Frechet distance between Gaussians fitted to the classifier's 128-d
  penultimate features of the images and of *real renders of the same prompts*;
  two parts of it come along to say *why* an FD is high:
  ``fd_shift`` = |mu_gen - mu_real|^2 (the images are off on average; the rest of the
  FD is the covariances' mismatch) and ``spread`` = tr(S_gen) / tr(S_real) (below 1:
  the images vary less than real renders do, as a mode-seeking one-step student's tend to).

The distillation code calls::

    prompts = fixed_eval_prompts(256)
    noise = eval_noise(len(prompts), seed, (4, 8, 8))
    metrics = evaluate_images(images_in_0_1, prompts)   # one seed
    summary = summarize([metrics_seed0, metrics_seed1, ...])  # mean and std over seeds
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import Tensor

from .classifier import AttributeClassifier, load_classifier, logits_to_scenes
from .data import render_prompts, step_generator
from .domain import Obj, ObjSpec, Scene, Spec, parse_caption, sample_captions, spec_matches

ASSETS = Path(__file__).resolve().parents[2] / "assets" / "tinyworld"
DEFAULT_CLASSIFIER = ASSETS / "classifier.safetensors"
DEFAULT_TEACHER = ASSETS / "teacher"
EVAL_PROMPT_SEED = 2026  # the fixed prompt set is sample_captions(n, EVAL_PROMPT_SEED)
REFERENCE_SEED = 777  # real renders the generated images are compared with


def fixed_eval_prompts(n: int = 256, seed: int = EVAL_PROMPT_SEED) -> list[str]:
    """The fixed evaluation prompt set: the same for every method, never the training draw."""
    return sample_captions(n, seed=seed + 1_000_000)


def eval_noise(n: int, seed: int, shape: Sequence[int] = (4, 8, 8)) -> Tensor:
    """Initial latents for ``n`` eval images at evaluation seed ``seed`` (shared by all methods)."""
    return torch.randn((n, *shape), generator=step_generator(seed, "eval-noise", 0))


@functools.lru_cache(maxsize=4)
def _cached_classifier(path: str) -> AttributeClassifier:
    return load_classifier(Path(path))


def get_classifier(path: Path | None = None) -> AttributeClassifier:
    return _cached_classifier(str(Path(path or DEFAULT_CLASSIFIER).resolve()))


@torch.no_grad()
def classify(images: Tensor, classifier: AttributeClassifier | None = None, batch: int = 256) -> tuple[Tensor, list[Scene]]:
    """``(features [N, 128], predicted scenes)`` for images in [0, 1]."""
    clf = classifier or get_classifier()
    _check_images(images)
    feats, scenes = [], []
    for i in range(0, images.shape[0], batch):
        x = images[i : i + batch].float().cpu().clamp(0, 1)
        f = clf.features(x)
        feats.append(f.double())
        scenes += logits_to_scenes({k: head(f) for k, head in clf.heads.items()})
    return torch.cat(feats), scenes


def _check_images(images: Tensor) -> None:
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be [N, 3, H, W] in [0, 1], got shape {tuple(images.shape)}")


def gaussian_stats(features: Tensor) -> tuple[Tensor, Tensor]:
    f = features.double()
    mu = f.mean(0)
    centred = f - mu
    return mu, centred.T @ centred / max(1, f.shape[0] - 1)


def frechet_distance(mu1: Tensor, s1: Tensor, mu2: Tensor, s2: Tensor) -> float:
    """``|mu1-mu2|^2 + tr(S1) + tr(S2) - 2 tr((S1^1/2 S2 S1^1/2)^1/2)`` via symmetric eigendecompositions.

    ``S1^1/2 S2 S1^1/2`` is symmetric PSD and has the same eigenvalues as ``S1 S2``,
    so the trace term needs no non-symmetric matrix square root.
    """
    mu1, s1, mu2, s2 = (t.double() for t in (mu1, s1, mu2, s2))
    w, v = torch.linalg.eigh(s1)
    root1 = (v * w.clamp_min(0).sqrt()) @ v.T
    mid = root1 @ s2 @ root1
    tr_sqrt = torch.linalg.eigvalsh((mid + mid.T) / 2).clamp_min(0).sqrt().sum()
    return float(((mu1 - mu2) ** 2).sum() + s1.trace() + s2.trace() - 2 * tr_sqrt)


@functools.lru_cache(maxsize=8)
def _reference_stats(prompts: tuple[str, ...], seed: int, copies: int, classifier_path: str) -> tuple[Tensor, Tensor]:
    images = torch.cat([render_prompts(prompts, seed=seed * 1000 + c) for c in range(copies)])
    feats, _ = classify(images, _cached_classifier(classifier_path))
    return gaussian_stats(feats)


def reference_stats(prompts: Sequence[str], seed: int = REFERENCE_SEED, copies: int = 4,
                    classifier_path: Path | None = None) -> tuple[Tensor, Tensor]:  # fmt: skip
    """Feature Gaussian of ``copies`` real renders per prompt (cached; more samples = a steadier reference)."""
    path = str(Path(classifier_path or DEFAULT_CLASSIFIER).resolve())
    return _reference_stats(tuple(prompts), seed, copies, path)


def _obj_hits(spec: ObjSpec, obj: Obj) -> dict[str, bool]:
    return {k: getattr(obj, k) == v for k, v in (("color", spec.color), ("shape", spec.shape), ("size", spec.size)) if v}


def attribute_hits(spec: Spec, scene: Scene) -> dict[str, bool]:
    """Which of the prompt's attributes the scene gets right (object attributes need the right count)."""
    hits: dict[str, bool] = {"count": len(spec.objects) == len(scene.objects)}
    if spec.background:
        hits["background"] = spec.background == scene.background
    if not hits["count"]:
        return hits
    if len(spec.objects) == 1:
        if spec.position:
            hits["position"] = spec.position == scene.layout
        pairs = [(spec.objects[0], scene.objects[0])]
    else:
        if spec.relation != "any":
            hits["relation"] = spec.relation == scene.layout
        pairs = list(zip(spec.objects, scene.objects))
        if spec.relation == "any" or scene.layout != spec.relation:
            # Order unsaid (or axis wrong): score the object pairing that fits best.
            swapped = list(zip(spec.objects, reversed(scene.objects)))
            score = lambda ps: sum(sum(_obj_hits(s, o).values()) for s, o in ps)  # noqa: E731
            pairs = max(pairs, swapped, key=score)
    for s, o in pairs:
        for k, v in _obj_hits(s, o).items():
            hits[k] = hits.get(k, True) and v
    return hits


def alignment(scenes: Sequence[Scene], prompts: Sequence[str]) -> dict[str, float]:
    """Fraction of scenes matching their prompt, and per-attribute accuracies."""
    specs = [parse_caption(p) for p in prompts]
    total = sum(spec_matches(s, sc) for s, sc in zip(specs, scenes)) / len(specs)
    tallies: dict[str, list[int]] = {}
    for s, sc in zip(specs, scenes):
        for k, v in attribute_hits(s, sc).items():
            tallies.setdefault(k, [0, 0])
            tallies[k][0] += int(v)
            tallies[k][1] += 1
    out = {"alignment": total}
    out.update({f"acc_{k}": hit / n for k, (hit, n) in sorted(tallies.items())})
    return out


def evaluate_images(
    images: Tensor,
    prompts: Sequence[str],
    classifier_path: Path | None = None,
    reference: tuple[Tensor, Tensor] | None = None,
) -> dict[str, float]:
    """Alignment + FD of ``images`` ([N, 3, H, W] in [0, 1]) generated for ``prompts``.

    The FD reference defaults to real renders of the same prompts (4 per prompt).
    FD has a finite-sample bias: compare numbers computed at the same N.
    """
    if images.shape[0] != len(prompts):
        raise ValueError(f"got {images.shape[0]} images for {len(prompts)} prompts")
    clf = get_classifier(classifier_path)
    feats, scenes = classify(images, clf)
    mu_r, s_r = reference if reference is not None else reference_stats(prompts, classifier_path=classifier_path)
    mu_g, s_g = gaussian_stats(feats)
    out = alignment(scenes, prompts)
    out["fd"] = frechet_distance(mu_g, s_g, mu_r, s_r)
    out["fd_shift"] = float(((mu_g - mu_r) ** 2).sum())
    out["spread"] = float(s_g.trace() / s_r.trace())
    out["n"] = float(len(prompts))
    return out


def summarize(per_seed: Sequence[dict[str, float]]) -> dict[str, float]:
    """Mean and (sample) standard deviation of every metric over seeds: ``{k}_mean``, ``{k}_std``."""
    out: dict[str, float] = {"seeds": float(len(per_seed))}
    for k in per_seed[0]:
        vals = [m[k] for m in per_seed if k in m]
        mean = sum(vals) / len(vals)
        var = sum((v - mean) ** 2 for v in vals) / max(1, len(vals) - 1)
        out[f"{k}_mean"], out[f"{k}_std"] = mean, math.sqrt(var)
    return out


def evaluate_generator(
    generate: Callable[[list[str], int], Tensor],
    prompts: Sequence[str],
    seeds: Sequence[int] = (0, 1, 2),
    classifier_path: Path | None = None,
) -> dict[str, object]:
    """Run ``generate(prompts, seed) -> images in [0,1]`` for each seed; per-seed metrics + summary."""
    per_seed = [evaluate_images(generate(list(prompts), s), prompts, classifier_path) for s in seeds]
    return {"per_seed": per_seed, "summary": summarize(per_seed), "seeds": list(seeds), "n_prompts": len(prompts)}
