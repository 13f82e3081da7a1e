"""One frozen base serves teacher, fake and student, for every adapter kind of the ablation."""

from __future__ import annotations

import pytest
import torch
from distill_helpers import tiny_bases_fixture  # noqa: F401  (fixture)
from torch import nn
from wadi_lorad.lorad.layer import LoRaDLayer
from wadi_lorad.trainer.adapters import build_views
from wadi_lorad.trainer.backbones import load_backbone
from wadi_lorad.trainer.config import AdapterConfig
from wadi_lorad.trainer.step import StepSettings, draw_batch, micro_step
from wadi_lorad.trainer.vsd import cfg_eps

S = StepSettings(999, 0.0046601, 1.5, 1.0, (20, 980), (0, 999), 0.1)


def _setup(base, **kw):
    bb = load_backbone(base)
    base_ptrs = {n: p.data_ptr() for n, p in bb.denoiser.named_parameters()}
    views = build_views(bb.denoiser, AdapterConfig(student_rank=4, fake_rank=2, **kw))
    cond = bb.encode_prompts(["a red circle", "green square on top"]).float()
    return bb, views, cond, bb.null_cond().float(), base_ptrs


def _eps(bb, view, x, t, cond):
    with torch.no_grad(), view as m:
        return bb.eps(m, x, t, cond)


def _train(bb, views, cond, null, steps=2, seed=0):
    opt = torch.optim.AdamW(views.student.parameters() + views.fake.parameters(), lr=1e-2)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        micro_step(bb, views, draw_batch(gen, 2, 2, (4, 8, 8), S), cond, null, S)
        opt.step()
        opt.zero_grad()


@pytest.mark.parametrize("kind", ["lorad", "lora", "dora", "full"])
def test_views_share_one_frozen_base(tiny_bases, kind):
    bb, views, cond, null, ptrs = _setup(tiny_bases("sd"), kind=kind)
    x, t = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1)), torch.tensor([999, 999])
    teacher0 = _eps(bb, views.teacher(), x, t, cond)
    # The student and the fake start as the teacher (zero-initialised angles / LoRA B).
    torch.testing.assert_close(_eps(bb, views.student_view(), x, t, cond), teacher0, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(_eps(bb, views.fake_view(), x, t, cond), teacher0, rtol=1e-5, atol=1e-6)
    # Teacher and fake always run on the base module itself; so does the student except for `full`.
    with views.teacher() as mt, views.fake_view() as mf, views.student_view() as ms:
        assert mt is bb.denoiser and mf is bb.denoiser
        assert (ms is bb.denoiser) == (kind != "full")
    # No base weight was copied or re-allocated by the injection: every base tensor keeps its storage.
    now = {n.replace(".base_layer", ""): p.data_ptr() for n, p in bb.denoiser.named_parameters()}
    assert all(now[n] == ptr for n, ptr in ptrs.items())
    frozen_before = {n: p.detach().clone() for n, p in bb.denoiser.named_parameters() if not p.requires_grad}
    assert all(not p.requires_grad for n, p in bb.denoiser.named_parameters()
               if n.replace(".base_layer", "") in ptrs)
    s0, f0 = views.student.state(), views.fake.state()
    _train(bb, views, cond, null)
    # Training moved the student and the fake, and left the base (the teacher) bit-identical.
    assert any(not torch.equal(s0[k], v) for k, v in views.student.state().items())
    assert any(not torch.equal(f0[k], v) for k, v in views.fake.state().items())
    assert all(torch.equal(p, frozen_before[n]) for n, p in bb.denoiser.named_parameters() if n in frozen_before)
    assert torch.equal(_eps(bb, views.teacher(), x, t, cond), teacher0)
    assert not torch.allclose(_eps(bb, views.student_view(), x, t, cond), teacher0)


def test_lora_student_and_lora_fake_are_two_peft_adapters(tiny_bases):
    bb, views, cond, null, _ = _setup(tiny_bases("sd"), kind="lora", fake_kind="same")
    assert views.student.kind == views.fake.kind == "lora"
    assert all(".student." in k for k in views.student.params) and all(".fake." in k for k in views.fake.params)
    _train(bb, views, cond, null)
    x, t = torch.randn(2, 4, 8, 8), torch.tensor([500, 500])
    e_s, e_f = _eps(bb, views.student_view(), x, t, cond), _eps(bb, views.fake_view(), x, t, cond)
    e_t = _eps(bb, views.teacher(), x, t, cond)
    assert not torch.allclose(e_s, e_f) and not torch.allclose(e_s, e_t) and not torch.allclose(e_f, e_t)
    # Switching views keeps both adapters trainable (PEFT's set_adapter would freeze the inactive one).
    assert all(p.requires_grad for p in views.student.parameters() + views.fake.parameters())


def test_each_linear_runs_once_per_cfg_forward(tiny_bases):
    bb, views, cond, null, _ = _setup(tiny_bases("sd"))
    calls: dict[str, int] = {}
    hooks = [m.register_forward_hook(lambda mod, i, o, n=n: calls.__setitem__(n, calls.get(n, 0) + 1))
             for n, m in bb.denoiser.named_modules() if isinstance(m, (nn.Linear, LoRaDLayer))]
    x, t = torch.randn(2, 4, 8, 8), torch.tensor([300, 300])
    with torch.no_grad(), views.teacher() as m:
        cfg_eps(lambda a, b, c: bb.eps(m, a, b, c), x, t, cond, null, 1.5)
    for h in hooks:
        h.remove()
    assert calls and set(calls.values()) == {1}


def test_gradient_checkpointing_recomputes_with_the_right_adapters(tiny_bases):
    grads = []
    for ckpt in (False, True):
        bb, views, cond, null, _ = _setup(tiny_bases("sd"))
        with torch.no_grad():
            for p in views.fake.parameters():
                p.add_(0.1)  # a fake that differs from the student: a wrong recompute would show
        if ckpt:
            bb.enable_gradient_checkpointing(bb.denoiser)
        micro_step(bb, views, draw_batch(torch.Generator().manual_seed(0), 2, 2, (4, 8, 8), S), cond, null, S)
        grads.append([p.grad.clone() for p in views.student.parameters() + views.fake.parameters()])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)


def test_bf16_autocast_keeps_angles_fp32(tiny_bases):
    bb, views, cond, null, _ = _setup(tiny_bases("sd"))
    seen = []
    h = bb.denoiser.down_blocks[0].attentions[0].transformer_blocks[0].attn1.to_q.register_forward_hook(
        lambda m, i, o: seen.append(o.dtype))

    def autocast():
        return torch.autocast("cpu", dtype=torch.bfloat16)
    ls, lf = micro_step(bb, views, draw_batch(torch.Generator().manual_seed(0), 2, 2, (4, 8, 8), S), cond,
                        null, S, autocast)
    h.remove()
    assert torch.bfloat16 in seen  # the LoRaD op computed in bf16 under autocast ...
    params = views.student.parameters() + views.fake.parameters()
    assert all(p.dtype == torch.float32 for p in params)  # ... while the angles stay fp32
    assert all(p.grad is not None and p.grad.dtype == torch.float32 and torch.isfinite(p.grad).all()
               for p in params)
    assert any(float(p.grad.abs().sum()) > 0 for p in views.student.parameters())
    assert ls == ls and lf == lf  # finite (not NaN)
