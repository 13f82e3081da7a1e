"""Tiny-world metrics: the Frechet distance formula, the alignment logic, and the shipped classifier on real data."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from wadi_lorad.trainer.tinyworld import domain, metrics
from wadi_lorad.trainer.tinyworld.data import render_prompts


def _random_cov(d: int, seed: int) -> torch.Tensor:
    a = torch.randn(d, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return a @ a.T / d + 0.1 * torch.eye(d, dtype=torch.float64)


def test_frechet_distance_matches_scipy_sqrtm():
    linalg = pytest.importorskip("scipy.linalg")
    d = 12
    mu1 = torch.randn(d, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    mu2 = torch.randn(d, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    s1, s2 = _random_cov(d, 2), _random_cov(d, 3)
    covmean = linalg.sqrtm((s1 @ s2).numpy()).real
    expected = float(((mu1 - mu2) ** 2).sum() + s1.trace() + s2.trace() - 2 * covmean.trace())
    assert metrics.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-8)


def test_frechet_distance_closed_forms():
    d = 6
    s = _random_cov(d, 4)
    mu = torch.zeros(d, dtype=torch.float64)
    assert metrics.frechet_distance(mu, s, mu, s) == pytest.approx(0.0, abs=1e-9)
    shift = torch.arange(d, dtype=torch.float64)
    assert metrics.frechet_distance(mu, s, shift, s) == pytest.approx(float((shift**2).sum()), rel=1e-9)
    # Isotropic covariances: (sqrt(a) - sqrt(b))^2 per dimension.
    eye = torch.eye(d, dtype=torch.float64)
    assert metrics.frechet_distance(mu, 4 * eye, mu, 9 * eye) == pytest.approx(d * (2 - 3) ** 2, rel=1e-9)


def test_gaussian_stats_unbiased():
    x = torch.randn(500, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    mu, cov = metrics.gaussian_stats(x)
    assert torch.allclose(mu, x.mean(0)) and torch.allclose(cov, torch.cov(x.T))


def test_attribute_hits_and_alignment_logic():
    red_left = domain.Scene((domain.Obj("circle", "red", "large"), domain.Obj("square", "blue", "small")), "horizontal", "gray")
    hits = metrics.attribute_hits(domain.parse_caption("a red circle left of a green square"), red_left)
    assert hits == {"count": True, "relation": True, "color": False, "shape": True}
    # Right objects, wrong axis: relation fails, the objects are still credited via the best pairing.
    stacked = domain.Scene(red_left.objects, "vertical", "gray")
    hits = metrics.attribute_hits(domain.parse_caption("a blue square right of a red circle"), stacked)
    assert hits["relation"] is False and hits["color"] and hits["shape"]
    res = metrics.alignment([red_left, stacked], ["a red circle left of a blue square", "a red circle left of a blue square"])
    assert res["alignment"] == 0.5 and res["acc_relation"] == 0.5 and res["acc_color"] == 1.0


def test_fixed_prompts_and_noise_are_fixed():
    assert metrics.fixed_eval_prompts(16) == metrics.fixed_eval_prompts(16)
    assert metrics.fixed_eval_prompts(16) != domain.sample_captions(16, seed=0)
    assert metrics.eval_noise(4, 1).equal(metrics.eval_noise(4, 1)) and not metrics.eval_noise(4, 1).equal(metrics.eval_noise(4, 2))
    assert metrics.eval_noise(3, 0, (4, 8, 8)).shape == (3, 4, 8, 8)


@pytest.fixture(scope="module")
def prompts():
    return metrics.fixed_eval_prompts(128)


def test_shipped_classifier_scores_real_images_high_and_shuffled_low(prompts):
    real = render_prompts(prompts, seed=123)
    good = metrics.evaluate_images(real, prompts)
    assert good["alignment"] > 0.95
    shuffled = metrics.evaluate_images(real, prompts[1:] + prompts[:1])
    assert shuffled["alignment"] < 0.2
    noise = torch.rand(real.shape, generator=torch.Generator().manual_seed(0))
    bad = metrics.evaluate_images(noise, prompts)
    assert bad["alignment"] < 0.05
    # FD: a fresh real draw is close to the reference, noise is far.
    assert good["fd"] * 10 < bad["fd"]
    # Its parts, recomputed here from the features: the mean's shift, and the spread of the
    # features against the reference's (a fresh real draw spreads as much as the reference).
    mu_r, s_r = metrics.reference_stats(prompts)
    for images, scores in ((real, good), (noise, bad)):
        feats = metrics.classify(images)[0].numpy()
        assert scores["fd_shift"] == pytest.approx(float(((feats.mean(0) - mu_r.numpy()) ** 2).sum()), rel=1e-9)
        assert scores["spread"] == pytest.approx(float(np.cov(feats.T).trace() / s_r.trace()), rel=1e-9)
        assert 0 <= scores["fd_shift"] <= scores["fd"]
    assert 0.9 < good["spread"] < 1.1


def test_evaluate_images_checks_its_input(prompts):
    with pytest.raises(ValueError, match="images"):
        metrics.evaluate_images(torch.zeros(2, 3, 32, 32), prompts[:3])
    with pytest.raises(ValueError, match=r"\[N, 3, H, W\]"):
        metrics.evaluate_images(torch.zeros(3, 32, 32), prompts[:3])


def test_summarize_over_seeds():
    s = metrics.summarize([{"alignment": 0.5, "fd": 2.0}, {"alignment": 0.7, "fd": 4.0}])
    assert s["alignment_mean"] == pytest.approx(0.6) and s["fd_mean"] == pytest.approx(3.0)
    assert s["alignment_std"] == pytest.approx(0.1414213, rel=1e-5) and s["seeds"] == 2
