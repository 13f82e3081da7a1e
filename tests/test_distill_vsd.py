"""The VSD objective against independent formulas (toy models and a tiny UNet)."""

from __future__ import annotations

import math

import pytest
import torch
from distill_helpers import tiny_bases_fixture  # noqa: F401  (fixture)
from wadi_lorad.lorad.onestep import OFFICIAL_ALPHA_BAR_T, scaled_linear_alphas_cumprod
from wadi_lorad.trainer.adapters import build_views
from wadi_lorad.trainer.backbones import TextCond, load_backbone
from wadi_lorad.trainer.config import AdapterConfig
from wadi_lorad.trainer.step import StepSettings, draw_batch, micro_step
from wadi_lorad.trainer.vsd import cfg_eps, fake_loss, noisy, one_step_x0, student_loss, vsd_direction


def _toy(seed):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(4, 4, generator=g)

    def eps(x, t, c):  # any smooth function of (x_t, t, cond) will do
        h = torch.einsum("bchw,cd->bdhw", x, w) + c.embeds.mean(dim=(1, 2)).view(-1, 1, 1, 1)
        return torch.tanh(h) * (1 + t.view(-1, 1, 1, 1) / 1000)
    return eps


def test_student_gradient_is_sigma2_times_eps_difference():
    torch.manual_seed(0)
    x0 = torch.randn(3, 4, 2, 2, requires_grad=True)
    noise = torch.randn(3, 4, 2, 2)
    t = torch.tensor([20, 500, 980])
    ab = scaled_linear_alphas_cumprod().float()[t]
    cond, null = TextCond(torch.randn(3, 5, 6)), TextCond(torch.randn(1, 5, 6))
    teacher, fake = _toy(1), _toy(2)
    x_t = noisy(x0.detach(), noise, ab)
    g = vsd_direction(cfg_eps(teacher, x_t, t, cond, null, 1.5), cfg_eps(fake, x_t, t, cond, null, 1.3), ab)
    student_loss(x0, g).backward()
    # Independent: x_t, CFG and sigma_t^2 written out per sample.
    want = torch.empty_like(x0)
    for i in range(3):
        a = float(ab[i])
        xt = math.sqrt(a) * x0[i: i + 1].detach() + math.sqrt(1 - a) * noise[i: i + 1]
        ti = t[i: i + 1]
        c_i, n_i = TextCond(cond.embeds[i: i + 1]), null
        et = teacher(xt, ti, n_i) + 1.5 * (teacher(xt, ti, c_i) - teacher(xt, ti, n_i))
        ef = fake(xt, ti, n_i) + 1.3 * (fake(xt, ti, c_i) - fake(xt, ti, n_i))
        want[i] = (1 - a) * (et - ef)[0] / x0.numel()
    torch.testing.assert_close(x0.grad, want, rtol=1e-5, atol=1e-9)


def test_nonfinite_direction_is_zeroed_and_losses_match_formulas():
    e_t = torch.tensor([[1.0, float("nan")], [float("inf"), 2.0]]).view(2, 2, 1, 1)
    e_f = torch.zeros(2, 2, 1, 1)
    g = vsd_direction(e_t, e_f, torch.tensor([0.5, 0.75]))
    assert torch.equal(g.flatten(), torch.tensor([0.5, 0.0, 0.0, 0.5]))
    eps, n, ab = torch.randn(2, 3, 2, 2), torch.randn(2, 3, 2, 2), torch.tensor([0.9, 0.2])
    want = (ab.view(-1, 1, 1, 1) * (eps - n) ** 2).mean()
    torch.testing.assert_close(fake_loss(eps, n, ab), want)
    x0, g2 = torch.randn(2, 3, 2, 2), torch.randn(2, 3, 2, 2)
    torch.testing.assert_close(student_loss(x0, g2), 0.5 * (g2**2).mean())  # value: 0.5 * mean(g^2)


def test_one_step_formula_at_t999():
    ab = float(scaled_linear_alphas_cumprod()[999])
    assert abs(ab - 0.0046601) < 1e-6
    z, e = torch.randn(2, 4, 3, 3), torch.randn(2, 4, 3, 3)
    torch.testing.assert_close(one_step_x0(e, z, ab), (z - math.sqrt(1 - ab) * e) / math.sqrt(ab))
    torch.testing.assert_close(one_step_x0(e, z, OFFICIAL_ALPHA_BAR_T), (z - 0.99765 * e) / 0.068557, rtol=1e-4,
                               atol=1e-4)


def test_cfg_is_one_batched_call_and_scale_one_skips_uncond():
    calls = []
    base = _toy(3)

    def eps(x, t, c):
        calls.append(x.shape[0])
        return base(x, t, c)
    x, t = torch.randn(2, 4, 2, 2), torch.tensor([5, 600])
    cond, null = TextCond(torch.randn(2, 3, 4)), TextCond(torch.randn(1, 3, 4))
    out = cfg_eps(eps, x, t, cond, null, 2.0)
    assert calls == [4]
    e_u = base(x, t, TextCond(null.embeds.expand(2, 3, 4)))
    torch.testing.assert_close(out, e_u + 2.0 * (base(x, t, cond) - e_u))
    calls.clear()
    torch.testing.assert_close(cfg_eps(eps, x, t, cond, null, 1.0), base(x, t, cond))
    assert calls == [2]


@pytest.fixture
def sd_setup(tiny_bases):
    bb = load_backbone(tiny_bases("sd"))
    views = build_views(bb.denoiser, AdapterConfig(student_rank=4, fake_rank=2))
    with torch.no_grad():  # move the student and fake off their zero init so every term matters
        for p in views.student.parameters() + views.fake.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    cond = bb.encode_prompts(["a red circle", "blue square on the left"]).float()
    return bb, views, cond, bb.null_cond().float()


def test_batched_cond_uncond_equals_two_forwards(sd_setup):
    bb, views, cond, null = sd_setup
    x, t = torch.randn(2, 4, 8, 8), torch.tensor([100, 900])
    with torch.no_grad(), views.teacher() as m:
        batched = cfg_eps(lambda a, b, c: bb.eps(m, a, b, c), x, t, cond, null, 1.5)
        e_u = bb.eps(m, x, t, null.expand(2))
        e_c = bb.eps(m, x, t, cond)
    torch.testing.assert_close(batched, e_u + 1.5 * (e_c - e_u), rtol=1e-5, atol=1e-5)


def test_micro_step_student_gradient_matches_independent_chain(sd_setup):
    bb, views, cond, null = sd_setup
    ab_T = float(bb.alphas_cumprod[999])
    s = StepSettings(999, ab_T, 1.5, 1.2, (20, 980), (0, 999), 0.5)
    batch = draw_batch(torch.Generator().manual_seed(0), 2, 2, (4, 8, 8), s)
    micro_step(bb, views, batch, cond, null, s)
    got = [p.grad.clone() for p in views.student.parameters()]
    for p in views.student.parameters() + views.fake.parameters():
        p.grad = None
    # Independent chain: hand-written x0, un-batched CFG, sigma^2 (eps_t - eps_f), <x0, g> / numel.
    T = torch.full((2,), 999)
    with views.student_view() as m:
        x0 = (batch.z - math.sqrt(1 - ab_T) * bb.eps(m, batch.z, T, cond)) / math.sqrt(ab_T)
    ab = bb.alphas_cumprod[batch.t].float().view(-1, 1, 1, 1)
    with torch.no_grad():
        x_t = ab.sqrt() * x0 + (1 - ab).sqrt() * batch.noise
        with views.teacher() as m:
            u, c = bb.eps(m, x_t, batch.t, null.expand(2)), bb.eps(m, x_t, batch.t, cond)
            e_t = u + 1.5 * (c - u)
        with views.fake_view() as m:
            u, c = bb.eps(m, x_t, batch.t, null.expand(2)), bb.eps(m, x_t, batch.t, cond)
            e_f = u + 1.2 * (c - u)
        g = (1 - ab) * (e_t - e_f)
    with views.student_view():
        want = torch.autograd.grad((x0 * g).sum() / x0.numel(), views.student.parameters())
    assert sum(float(w.abs().sum()) for w in want) > 0
    # Batched vs separate forwards round differently, and g is a difference of close eps values,
    # so compare whole tensors: relative error of the norm.
    for a, b in zip(got, want):
        assert float((a - b).norm() / b.norm()) < 2e-3
