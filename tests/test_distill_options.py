"""Distillation options beyond the paper, against independent formulas: DMD weighting, a full
fake score, extra fake-score updates (TTUR), convolution targets and DMD's regression term."""

from __future__ import annotations

import math

import pytest
import torch
from distill_helpers import tiny_bases_fixture  # noqa: F401  (fixture)
from torch import nn
from wadi_lorad.lorad.inject import lorad_layers
from wadi_lorad.lorad.presets import match_modules, resolve_targets
from wadi_lorad.trainer.adapters import build_views
from wadi_lorad.trainer.backbones import load_backbone
from wadi_lorad.trainer.config import AdapterConfig, ConfigError, DistillConfig, config_hash, validate
from wadi_lorad.trainer.vsd import vsd_direction


def test_dmd_weighting_is_normalised_x0_difference():
    torch.manual_seed(0)
    x0, noise = torch.randn(3, 4, 2, 2), torch.randn(3, 4, 2, 2)
    e_t, e_f = torch.randn(3, 4, 2, 2), torch.randn(3, 4, 2, 2)
    ab = torch.tensor([0.95, 0.5, 0.01])
    x_t = ab.sqrt().view(-1, 1, 1, 1) * x0 + (1 - ab).sqrt().view(-1, 1, 1, 1) * noise
    g = vsd_direction(e_t, e_f, ab, "dmd", x0, x_t)
    for i in range(3):  # written out: x0 predictions of teacher and fake, per-sample mean |x0 - x0_teacher|
        a = float(ab[i])
        xt_i = math.sqrt(a) * x0[i] + math.sqrt(1 - a) * noise[i]
        p_teacher = (xt_i - math.sqrt(1 - a) * e_t[i]) / math.sqrt(a)
        p_fake = (xt_i - math.sqrt(1 - a) * e_f[i]) / math.sqrt(a)
        want = (p_fake - p_teacher) / (x0[i] - p_teacher).abs().mean()
        torch.testing.assert_close(g[i], want, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="needs x0 and x_t"):
        vsd_direction(e_t, e_f, ab, "dmd")
    with pytest.raises(ValueError, match="unknown weighting"):
        vsd_direction(e_t, e_f, ab, "nope")


def test_new_fields_keep_old_config_hashes_and_are_validated():
    cfg = DistillConfig()
    before = config_hash(cfg)
    cfg.vsd.fake_updates = 1
    cfg.vsd.weighting = "sigma2"
    assert config_hash(cfg) == before  # a checkpoint from before these fields existed still resumes
    cfg.vsd.fake_updates = 3
    assert config_hash(cfg) != before
    cfg.vsd.fake_updates = 0
    cfg.model.base, cfg.data.prompts = "x", "y"
    with pytest.raises(ConfigError, match="vsd.fake_updates"):
        validate(cfg)


def test_full_fake_is_a_separate_trainable_copy(tiny_bases):
    bb = load_backbone(tiny_bases("sd"))
    teacher_sd = {k: v.clone() for k, v in bb.denoiser.state_dict().items()}
    views = build_views(bb.denoiser, AdapterConfig(student_rank=4, fake_kind="full"))
    assert views.fake.kind == "full" and views.fake_module is not bb.denoiser
    assert views.fake.num_params() == sum(v.numel() for v in teacher_sd.values() if v.is_floating_point())
    # the copy starts as the teacher, has no LoRaD layer, and only it is trainable in the fake view
    assert not list(lorad_layers(views.fake_module))
    for k, v in views.fake_module.state_dict().items():
        assert torch.equal(v, teacher_sd[k])
    x, t = torch.randn(2, 4, 8, 8), torch.tensor([10, 900])
    cond = bb.encode_prompts(["a red circle", "a cross"]).float()
    with views.fake_view() as m:
        bb.eps(m, x, t, cond).square().mean().backward()
    assert all(p.grad is not None for p in views.fake.parameters())
    assert all(p.grad is None for p in views.student.parameters())
    assert all(p.grad is None for p in bb.denoiser.parameters() if not p.requires_grad)


def test_conv_presets_adapt_convolutions(tiny_bases):
    bb = load_backbone(tiny_bases("sd"))
    unet = bb.denoiser
    paper = dict(match_modules(unet, resolve_targets(unet, "paper-student")))
    blocks = dict(match_modules(unet, resolve_targets(unet, "blocks-linear-conv")))
    every = dict(match_modules(unet, resolve_targets(unet, "all-linear-conv")))
    assert set(paper) < set(blocks) < set(every)
    assert all(isinstance(m, nn.Linear) for m in paper.values())
    convs = [n for n, m in blocks.items() if isinstance(m, nn.Conv2d)]
    assert convs and not any("conv_shortcut" in n for n in convs)
    assert {"conv_in", "conv_out"} <= set(every)
    # a conv student trains: gradients reach the conv adapters
    views = build_views(unet, AdapterConfig(student_rank=4, fake_rank=2, student_targets="blocks-linear-conv"))
    with torch.no_grad():
        for p in views.student.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    cond = bb.encode_prompts(["a red circle"]).float()
    with views.student_view() as m:
        bb.eps(m, torch.randn(1, 4, 8, 8), torch.tensor([999]), cond).square().mean().backward()
    conv_grads = [p.grad for n, p in views.student.params.items() if any(c in n for c in convs)]
    assert conv_grads and all(g is not None and g.abs().sum() > 0 for g in conv_grads)


def _assert_resume_after_2_equals(d, tiny_bases, prompts, out, over) -> None:
    """A run of ``over`` stopped after step 2 and resumed ends with ``d``'s student and fake, bit for bit."""
    from distill_helpers import small_cfg
    from wadi_lorad.trainer.distill import Distiller

    Distiller(small_cfg(tiny_bases("sd"), prompts, out, **dict(over, train__max_steps=2, output__checkpoint_every=1)),
              progress=False, log=lambda *_: None).run()
    r = Distiller(small_cfg(tiny_bases("sd"), prompts, out, resume="latest", **over), progress=False,
                  log=lambda *_: None)
    r.run()
    for part in ("fake", "student"):
        for k, p in getattr(d.views, part).params.items():
            assert torch.equal(p, getattr(r.views, part).params[k]), k


def test_fake_updates_step_the_fake_more_often_and_resume_exactly(tiny_bases, tmp_path):
    from distill_helpers import small_cfg, write_prompts
    from wadi_lorad.trainer.distill import Distiller

    prompts = write_prompts(tmp_path / "p.txt")
    over = {"vsd__fake_updates": 3, "train__max_steps": 3}
    d = Distiller(small_cfg(tiny_bases("sd"), prompts, tmp_path / "a", **over), progress=False, log=lambda *_: None)
    d.run()
    student_steps = {int(s["step"]) for s in d.opt_s.state_dict()["state"].values()}
    fake_steps = {int(s["step"]) for s in d.opt_f.state_dict()["state"].values()}
    assert student_steps == {3} and fake_steps == {9}
    # a run stopped after step 2 and resumed equals the uninterrupted run (the extra draws are in the stream)
    _assert_resume_after_2_equals(d, tiny_bases, prompts, tmp_path / "b", over)


def test_conv_adapters_get_their_own_learning_rate(tiny_bases, tmp_path):
    from distill_helpers import small_cfg, write_prompts
    from wadi_lorad.trainer.distill import Distiller

    cfg = small_cfg(tiny_bases("sd"), write_prompts(tmp_path / "p.txt"), tmp_path / "a",
                    adapter__student_targets="blocks-linear-conv", optim__conv_lr_scale=0.1, optim__student_lr=1e-3)
    d = Distiller(cfg, progress=False, log=lambda *_: None)
    d.setup()
    lin, conv = d.opt_s.param_groups
    assert lin["lr"] == pytest.approx(1e-3) and conv["lr"] == pytest.approx(1e-4)
    conv_layers = {n for n, layer in lorad_layers(d.bb.denoiser) if issubclass(layer.base_type, nn.Conv2d)}
    assert conv_layers
    want = {id(p) for k, p in d.views.student.params.items() if k.rsplit(".", 1)[0] in conv_layers}
    assert {id(p) for p in conv["params"]} == want
    assert len(lin["params"]) + len(conv["params"]) == len(d.views.student.parameters())
    d.train_step()  # the scheduler keeps each group's own rate
    assert [g["lr"] for g in d.opt_s.param_groups] == pytest.approx([1e-3, 1e-4])


def _regression_setup(base):
    from wadi_lorad.trainer.regression import PairBatch
    from wadi_lorad.trainer.step import StepSettings

    bb = load_backbone(base)
    views = build_views(bb.denoiser, AdapterConfig(student_rank=4, fake_rank=2))
    with torch.no_grad():  # a student away from the teacher, so every term has a gradient
        for p in views.student.parameters():
            p.normal_(0, 0.3)
    cond = bb.encode_prompts(["a red circle", "green square on top"]).float()
    g = torch.Generator().manual_seed(5)
    pairs = PairBatch(torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 4, 8, 8, generator=g), cond)
    ab_T = 0.0046601
    s = StepSettings(999, ab_T, 1.5, 1.0, (20, 980), (0, 999), 0.1, regression_weight=0.7)
    return bb, views, cond, bb.null_cond().float(), pairs, s


def _student_grads(bb, views, cond, null, s, pairs):
    from wadi_lorad.trainer.step import draw_batch, micro_step

    for p in views.student.parameters() + views.fake.parameters():
        p.grad = None
    micro_step(bb, views, draw_batch(torch.Generator().manual_seed(0), 2, 2, (4, 8, 8), s, n_pairs=2), cond, null,
               s, pairs=pairs)
    return [p.grad.clone() for p in views.student.parameters()]


def test_regression_term_adds_the_weighted_mse_gradient_to_the_teacher_pairs(tiny_bases):
    bb, views, cond, null, pairs, s = _regression_setup(tiny_bases("sd"))
    with_term = _student_grads(bb, views, cond, null, s, pairs)
    without = _student_grads(bb, views, cond, null, s, None)
    # Independent reference: x0 = (z - sqrt(1 - abar_T) eps) / sqrt(abar_T), loss = w * mean((x0 - x_teacher)^2)
    params = views.student.parameters()
    with views.student_view() as m:
        eps = bb.eps(m, pairs.z, torch.full((2,), 999), cond)
        x0 = (pairs.z - math.sqrt(1 - s.alpha_bar_T) * eps) / math.sqrt(s.alpha_bar_T)
        ref = torch.autograd.grad(s.regression_weight * ((x0 - pairs.x0) ** 2).mean(), params)
    assert any(r.abs().max() > 0 for r in ref)
    for a, b, r in zip(with_term, without, ref):
        torch.testing.assert_close(a - b, r, rtol=1e-4, atol=1e-7)


def test_teacher_pairs_are_the_teachers_multistep_output_and_are_cached(tiny_bases, tmp_path):
    from wadi_lorad.trainer.regression import load_or_make_pairs, make_pairs, pairs_identity
    from wadi_lorad.trainer.sampling import teacher_multistep

    bb = load_backbone(tiny_bases("sd"))
    table = bb.encode_prompts(["a red circle", "green square on top", "a blue star"]).float()
    null = bb.null_cond().float()

    def sample(idx, z):
        return teacher_multistep(bb, bb.denoiser, table.index(idx), null, z, 3, 2.0)

    calls = []

    def make():
        calls.append(1)
        return make_pairs(sample, 5, 3, (4, 8, 8), seed=1, batch=2)

    path = tmp_path / f"pairs-{pairs_identity('fp', ['a'], 5, 3, 2.0, 1, (4, 8, 8))}.safetensors"
    first = load_or_make_pairs(path, make, log=lambda *_: None)
    again = load_or_make_pairs(path, make, log=lambda *_: None)
    assert len(calls) == 1 and len(first) == 5
    for a, b in ((first.z, again.z), (first.x0, again.x0), (first.prompt_idx, again.prompt_idx)):
        assert torch.equal(a, b)
    # each pair is the teacher's own sampler on that noise and prompt (batching does not change it)
    one = teacher_multistep(bb, bb.denoiser, table.index(first.prompt_idx[3:4]), null, first.z[3:4], 3, 2.0)
    torch.testing.assert_close(first.x0[3:4], one, rtol=1e-4, atol=1e-5)
    # the cache name changes with anything the pairs depend on
    ids = {pairs_identity("fp", ["a"], 5, 3, 2.0, 1, (4, 8, 8)), pairs_identity("fp", ["a"], 5, 4, 2.0, 1, (4, 8, 8)),
           pairs_identity("fp", ["b"], 5, 3, 2.0, 1, (4, 8, 8)), pairs_identity("fp", ["a"], 5, 3, 3.0, 1, (4, 8, 8)),
           pairs_identity("fp2", ["a"], 5, 3, 2.0, 1, (4, 8, 8)), pairs_identity("fp", ["a"], 5, 3, 2.0, 2, (4, 8, 8))}
    assert len(ids) == 6


def test_regression_run_resumes_exactly_and_old_hashes_hold(tiny_bases, tmp_path):
    from distill_helpers import small_cfg, write_prompts
    from wadi_lorad.trainer.distill import Distiller

    cfg = DistillConfig()
    before = config_hash(cfg)
    cfg.vsd.regression_pairs, cfg.vsd.regression_steps = 2048, 25
    assert config_hash(cfg) == before
    cfg.vsd.regression_weight = 0.5
    assert config_hash(cfg) != before
    cfg.vsd.regression_weight = -1
    cfg.model.base, cfg.data.prompts = "x", "y"
    with pytest.raises(ConfigError, match="vsd.regression_weight"):
        validate(cfg)

    prompts = write_prompts(tmp_path / "p.txt")
    over = {"vsd__regression_weight": 0.5, "vsd__regression_pairs": 6, "vsd__regression_steps": 2,
            "train__max_steps": 3, "data__cache_dir": str(tmp_path / "cache")}
    d = Distiller(small_cfg(tiny_bases("sd"), prompts, tmp_path / "a", **over), progress=False, log=lambda *_: None)
    d.run()
    assert len(d.pairs) == 6 and len(list((tmp_path / "cache").glob("pairs-*.safetensors"))) == 1
    _assert_resume_after_2_equals(d, tiny_bases, prompts, tmp_path / "b", over)
    # the same run without the term trains a different student
    plain = Distiller(small_cfg(tiny_bases("sd"), prompts, tmp_path / "c", **dict(over, vsd__regression_weight=0.0)),
                      progress=False, log=lambda *_: None)
    plain.run()
    assert plain.pairs is None
    assert any(not torch.equal(p, plain.views.student.params[k]) for k, p in d.views.student.params.items())


def test_regression_ramp_reaches_each_step_and_resumes_exactly(tiny_bases, tmp_path, monkeypatch):
    from distill_helpers import small_cfg, write_prompts
    from wadi_lorad.trainer import distill
    from wadi_lorad.trainer.regression import regression_weight_at

    # Reference: step k of N (0-based) weighs the term by w * (k + 1) / N going up, w * (N - k) / N
    # going down, and w when constant.
    n, w = 4, 0.8
    assert [regression_weight_at(w, "up", k, n) for k in range(n)] == pytest.approx([0.2, 0.4, 0.6, 0.8])
    assert [regression_weight_at(w, "down", k, n) for k in range(n)] == pytest.approx([0.8, 0.6, 0.4, 0.2])
    assert [regression_weight_at(w, "constant", k, n) for k in range(n)] == [w] * n
    with pytest.raises(ValueError, match="vsd.regression_ramp"):
        regression_weight_at(w, "cosine", 0, n)
    cfg = DistillConfig()
    before = config_hash(cfg)
    cfg.vsd.regression_ramp = "constant"
    assert config_hash(cfg) == before  # checkpoints from before the option still resume
    cfg.vsd.regression_ramp = "up"
    assert config_hash(cfg) != before

    # The trainer hands each step its own weight (recorded where the step receives it).
    seen: list[float] = []
    real = distill.micro_step

    def recording(*args, **kwargs):
        seen.append(args[5].regression_weight)
        return real(*args, **kwargs)

    monkeypatch.setattr(distill, "micro_step", recording)
    prompts = write_prompts(tmp_path / "p.txt")
    over = {"vsd__regression_weight": 0.6, "vsd__regression_ramp": "up", "vsd__regression_pairs": 6,
            "vsd__regression_steps": 2, "train__max_steps": 3, "data__cache_dir": str(tmp_path / "cache")}
    d = distill.Distiller(small_cfg(tiny_bases("sd"), prompts, tmp_path / "a", **over), progress=False,
                          log=lambda *_: None)
    d.run()
    assert seen == pytest.approx([0.2, 0.4, 0.6])
    assert d.settings.regression_weight == 0.6  # the run's settings keep the configured weight
    # Stopped after step 1 of the same 3-step schedule and resumed: the ramp continues where it was
    # (not from its start, not at the full weight), bit for bit.  A shorter train.max_steps would be
    # another ramp, as it is another lr schedule.
    first = distill.Distiller(small_cfg(tiny_bases("sd"), prompts, tmp_path / "b", **over), progress=False,
                              log=lambda *_: None)
    first.setup()
    first.train_step()
    first.out.mkdir(parents=True, exist_ok=True)
    first.save_checkpoint()
    seen.clear()
    resumed = distill.Distiller(small_cfg(tiny_bases("sd"), prompts, tmp_path / "b", resume="latest", **over),
                                progress=False, log=lambda *_: None)
    resumed.run()
    assert seen == pytest.approx([0.4, 0.6])
    for part in ("fake", "student"):
        for k, p in getattr(d.views, part).params.items():
            assert torch.equal(p, getattr(resumed.views, part).params[k]), k


def test_uniform_fake_weighting_is_the_plain_eps_mse_and_reaches_the_fake(tiny_bases, tmp_path):
    from distill_helpers import small_cfg, write_prompts
    from wadi_lorad.trainer.distill import Distiller
    from wadi_lorad.trainer.vsd import fake_loss

    eps, n, ab = torch.randn(2, 3, 2, 2), torch.randn(2, 3, 2, 2), torch.tensor([0.9, 0.004])
    terms = [(float(eps[b, c, i, j]) - float(n[b, c, i, j])) ** 2
             for b in range(2) for c in range(3) for i in range(2) for j in range(2)]
    assert math.isclose(float(fake_loss(eps, n, ab, "uniform")), sum(terms) / len(terms), rel_tol=1e-6)
    weighted = [float(ab[b]) * (float(eps[b, c, i, j]) - float(n[b, c, i, j])) ** 2
                for b in range(2) for c in range(3) for i in range(2) for j in range(2)]
    assert math.isclose(float(fake_loss(eps, n, ab)), sum(weighted) / len(weighted), rel_tol=1e-6)
    with pytest.raises(ValueError, match="unknown weighting"):
        fake_loss(eps, n, ab, "snr")

    cfg = DistillConfig()
    before = config_hash(cfg)
    cfg.vsd.fake_weighting = "alpha_bar"
    assert config_hash(cfg) == before  # old checkpoints still resume
    cfg.vsd.fake_weighting = "uniform"
    assert config_hash(cfg) != before

    # one step: the student's update is taken before the fake's, so it is the same under both
    # weightings; the fake's update differs
    prompts = write_prompts(tmp_path / "p.txt")
    runs = {}
    for w in ("alpha_bar", "uniform"):
        runs[w] = Distiller(small_cfg(tiny_bases("sd"), prompts, tmp_path / w, train__max_steps=1,
                                      vsd__fake_weighting=w), progress=False, log=lambda *_: None)
        runs[w].run()
    a, u = runs["alpha_bar"].views, runs["uniform"].views
    assert all(torch.equal(p, u.student.params[k]) for k, p in a.student.params.items())
    assert any(not torch.equal(p, u.fake.params[k]) for k, p in a.fake.params.items())


def test_schedule_steps_stops_the_run_part_way_along_a_longer_cosine(tiny_bases, tmp_path):
    from distill_helpers import small_cfg, write_prompts
    from wadi_lorad.trainer.distill import Distiller

    over = {"optim__lr_scheduler": "cosine", "optim__schedule_steps": 8, "optim__student_lr": 1e-3,
            "optim__fake_lr": 1e-2, "vsd__fake_updates": 2, "train__max_steps": 3}
    d = Distiller(small_cfg(tiny_bases("sd"), write_prompts(tmp_path / "p.txt"), tmp_path / "a", **over),
                  progress=False, log=lambda *_: None)
    d.setup()
    for k in range(1, 4):
        d.train_step()
        # written out: a cosine over 8 student steps (16 fake updates, 2 per step), seen after step k
        assert d.opt_s.param_groups[0]["lr"] == pytest.approx(1e-3 * 0.5 * (1 + math.cos(math.pi * k / 8)))
        assert d.opt_f.param_groups[0]["lr"] == pytest.approx(1e-2 * 0.5 * (1 + math.cos(math.pi * 2 * k / 16)))
    cfg = DistillConfig()
    cfg.model.base, cfg.data.prompts = "x", "y"
    cfg.optim.lr_scheduler = "cosine"
    before = config_hash(cfg)
    cfg.optim.schedule_steps = 0
    assert config_hash(cfg) == before  # the default is not hashed: older checkpoints still resume
    cfg.optim.schedule_steps = cfg.train.max_steps * 2
    assert config_hash(cfg) != before  # another schedule is another run
    validate(cfg)
    cfg.optim.schedule_steps = cfg.train.max_steps - 1  # shorter than the run: a cosine would rise again
    with pytest.raises(ConfigError, match=r"optim.schedule_steps: .*at least train.max_steps \(1000\); got 999"):
        validate(cfg)
