"""The tiny world's captioned scenes: determinism, caption <-> scene consistency, rendered geometry."""

from __future__ import annotations

import random

import numpy as np
import pytest
from wadi_lorad.trainer.tinyworld import data, domain


def test_captions_deterministic_by_seed():
    assert domain.sample_captions(50, seed=3) == domain.sample_captions(50, seed=3)
    assert domain.sample_captions(50, seed=3) != domain.sample_captions(50, seed=4)


def test_render_deterministic_by_seed():
    cap = "a big red circle left of a small blue square on a gray background"
    a, b, c = domain.render(cap, seed=5), domain.render(cap, seed=5), domain.render(cap, seed=6)
    assert a.shape == (32, 32, 3) and a.dtype == np.float32
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)  # jitter of positions, radii and tints follows the seed
    assert 0.0 <= a.min() and a.max() <= 1.0


def test_every_caption_is_true_of_its_scene_and_parses_back():
    rng = random.Random(0)
    kinds = set()
    for _ in range(2000):
        scene = domain.sample_scene(rng)
        caption = domain.caption_scene(scene, rng)
        spec = domain.parse_caption(caption)
        assert domain.spec_matches(spec, scene), (caption, scene)
        # Filling the unsaid attributes at random keeps the caption true.
        assert domain.spec_matches(spec, domain.scene_from_spec(spec, rng)), caption
        kinds.add((len(spec.objects), spec.relation, spec.position is not None, spec.background is not None))
    # The templates really vary: one/two objects, every relation kind, with/without position and background.
    assert {k[1] for k in kinds} == {None, "horizontal", "vertical", "any"}
    assert {k[2] for k in kinds} == {True, False} and {k[3] for k in kinds} == {True, False}


def test_caption_mirrored_relations_mean_the_same_scene():
    left = domain.parse_caption("a red circle left of a blue square")
    right = domain.parse_caption("a blue square to the right of a red circle")
    assert left == right
    assert left.relation == "horizontal" and left.objects[0] == domain.ObjSpec("circle", "red", None)
    below = domain.parse_caption("a blue square below a red circle")
    assert below.relation == "vertical" and below.objects[0].color == "red"


def test_spec_mismatch_detected():
    scene = domain.Scene((domain.Obj("circle", "red", "large"), domain.Obj("square", "blue", "small")), "horizontal", "black")
    assert domain.spec_matches(domain.parse_caption("a red circle left of a blue square"), scene)
    assert not domain.spec_matches(domain.parse_caption("a blue square left of a red circle"), scene)
    assert not domain.spec_matches(domain.parse_caption("a red circle above a blue square"), scene)
    assert domain.spec_matches(domain.parse_caption("a blue square and a red circle"), scene)
    assert not domain.spec_matches(domain.parse_caption("a red circle"), scene)  # wrong object count
    assert not domain.spec_matches(domain.parse_caption("a small red circle left of a blue square"), scene)
    assert not domain.spec_matches(domain.parse_caption("a red circle left of a blue square on a white background"), scene)


@pytest.mark.parametrize(
    "bad", ["a red", "the red circle", "a red circle on a purple background", "a red circle near a square", ""]
)
def test_parse_errors_name_the_caption(bad):
    with pytest.raises(domain.CaptionError, match="caption"):
        domain.parse_caption(bad)


def _mask(img: np.ndarray, rgb: tuple[int, int, int], tol: float = 40) -> np.ndarray:
    return np.abs(img * 255 - np.asarray(rgb)).max(-1) < tol


def test_rendered_colours_and_positions_follow_the_caption():
    img = domain.render("a large red square in the center on a black background", seed=1)
    assert _mask(img, domain.COLORS["red"])[16, 16]
    assert _mask(img, domain.BACKGROUNDS["black"])[0, 0]
    for seed in range(10):
        img = domain.render("a red circle left of a blue triangle", seed=seed)
        xs_red = np.nonzero(_mask(img, domain.COLORS["red"]))[1]
        xs_blue = np.nonzero(_mask(img, domain.COLORS["blue"]))[1]
        assert xs_red.size > 10 and xs_blue.size > 10
        assert xs_red.mean() < 16 < xs_blue.mean()
        img = domain.render("a green cross above a pink square", seed=seed)
        ys_green = np.nonzero(_mask(img, domain.COLORS["green"]))[0]
        ys_pink = np.nonzero(_mask(img, domain.COLORS["pink"]))[0]
        assert ys_green.mean() < 16 < ys_pink.mean()


def test_shapes_have_distinct_areas_and_sizes():
    def area(caption: str) -> int:
        img = domain.render(caption + " in the center on a black background", seed=0)
        return int(_mask(img, domain.COLORS["yellow"]).sum())

    small, large = area("a small yellow circle"), area("a large yellow circle")
    ratio = large / small
    assert ratio > 1.8 and ratio < 3.5, ratio  # area ratio of radii ~1.6 (1.6^2 ~ 2.6)
    # A cross covers less than a square of the same size, a triangle less than a circle.
    assert area("a large yellow cross") < area("a large yellow square")
    assert area("a large yellow triangle") < area("a large yellow circle")


def test_batch_renderer_matches_single_renders_and_prompt_renders():
    scenes, seeds = data.random_scenes(0, "vae", 7, 16)
    batch = data.render_scenes(scenes, seeds)
    assert batch.shape == (16, 3, 32, 32)
    for i in (0, 5, 15):
        assert np.array_equal(batch[i].permute(1, 2, 0).numpy(), domain.render_scene(scenes[i], seeds[i]))
    prompts = domain.sample_captions(4, seed=1)
    real = data.render_prompts(prompts, seed=9)
    assert np.array_equal(real[2].permute(1, 2, 0).numpy(), domain.render(prompts[2], seed=data.step_seed(9, "eval-real", 2)))


def test_data_streams_are_pure_functions_of_the_step():
    a, sa = data.real_batch(0, "classifier", 11, 8)
    b, sb = data.real_batch(0, "classifier", 11, 8)
    c, _ = data.real_batch(0, "classifier", 12, 8)
    assert sa == sb and a.equal(b) and not a.equal(c)
    assert data.step_seed(0, "vae", 1) != data.step_seed(0, "unet", 1)
    with pytest.raises(KeyError, match="stream"):
        data.step_seed(0, "nope", 1)


def test_caption_dropout_gives_null_prompts():
    scenes, _ = data.random_scenes(0, "unet", 0, 400)
    caps = data.captions_for(scenes, 0, "unet", 0, drop_prob=0.1)
    nulls = sum(c == "" for c in caps)
    assert 15 < nulls < 70
    assert all(domain.spec_matches(domain.parse_caption(c), s) for c, s in zip(caps, scenes) if c)


def test_captioned_images_dataset():
    ds = data.CaptionedImages(10, seed=2)
    a, b = ds[3], ds[3]
    assert a["image"].shape == (3, 32, 32) and a["image"].equal(b["image"]) and a["caption"] == b["caption"]
    assert domain.spec_matches(domain.parse_caption(a["caption"]), a["scene"])
    with pytest.raises(IndexError):
        ds[10]
