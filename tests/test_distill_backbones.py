"""Every backbone the trainer supports, on tiny random-init folders: calls, conversions, one run."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch
from distill_helpers import small_cfg, tiny_bases_fixture, write_prompts  # noqa: F401  (fixture)
from safetensors.torch import load_file
from wadi_lorad.lorad import inject
from wadi_lorad.lorad.io import load_lorad
from wadi_lorad.trainer.backbones import BaseModelError, check_one_step_alpha_bar, inspect_folder, load_backbone
from wadi_lorad.trainer.cmd_sample import load_student
from wadi_lorad.trainer.distill import Distiller
from wadi_lorad.trainer.export import export_student
from wadi_lorad.trainer.sampling import one_step, seeded_noise


@pytest.mark.parametrize("kind", ["sd", "sd-v", "sdxl", "pixart"])
def test_each_backbone_runs_a_distillation_step(tiny_bases, tmp_path, kind):
    prompts = write_prompts(tmp_path / "p.txt", 10)
    # fake CFG 1.0 vs teacher 1.5: the VSD direction is non-zero from the first step.
    cfg = small_cfg(tiny_bases(kind), prompts, tmp_path / "run", train__max_steps=1, vsd__fake_guidance_scale=1.0)
    d = Distiller(cfg, progress=False)
    d.setup()
    s0 = d.views.student.state()
    logs = d.train_step()
    assert math.isfinite(logs["loss_student"]) and math.isfinite(logs["loss_fake"])
    assert logs["loss_student"] > 0 and logs["grad_norm_student"] > 0 and logs["grad_norm_fake"] > 0
    changed = [k for k, v in d.views.student.state().items() if not torch.equal(v, s0[k])]
    assert changed
    want = {"sd": "sd", "sd-v": "sd", "sdxl": "sdxl", "pixart": "pixart"}[kind]
    assert d.bb.kind == want
    # The exported .lorad reloads into a fresh copy of this base and reproduces the one-step output.
    path = export_student(d, "student", tmp_path / "s.lorad.safetensors", 4, "paper-student")
    assert load_lorad(path).arch == {"sd": "sd15", "sd-v": "sd21", "sdxl": "sdxl", "pixart": "pixart-alpha"}[kind]
    noise = seeded_noise([1, 2], d.latent)
    cond = d.batch_cond(torch.tensor([0, 1]))
    with d.views.student_view() as m:
        ref = one_step(d.bb, m, cond, noise, d.settings.alpha_bar_T)
    bb2 = load_backbone(tiny_bases(kind), text=False, vae=False)
    load_student(bb2, path)
    inject.set_active(bb2.denoiser, "student")
    assert torch.equal(one_step(bb2, bb2.denoiser, cond, noise, d.settings.alpha_bar_T), ref)


def test_v_prediction_is_converted_to_eps(tiny_bases):
    bb = load_backbone(tiny_bases("sd-v"))
    assert bb.prediction_type == "v_prediction"
    x, t = torch.randn(2, 4, 8, 8), torch.tensor([10, 700])
    cond = bb.encode_prompts(["a", "b"]).float()
    with torch.no_grad():
        v = bb.denoiser(x, t, encoder_hidden_states=cond.embeds).sample
        eps = bb.eps(bb.denoiser, x, t, cond)
    ab = bb.alphas_cumprod[t].float().view(-1, 1, 1, 1)
    torch.testing.assert_close(eps, (1 - ab).sqrt() * x + ab.sqrt() * v, rtol=1e-5, atol=1e-6)
    # and the x0 the eps form gives is the v-form x0 = sqrt(ab) x - sqrt(1-ab) v
    x0 = (x - (1 - ab).sqrt() * eps) / ab.sqrt()
    torch.testing.assert_close(x0, ab.sqrt() * x - (1 - ab).sqrt() * v, rtol=1e-4, atol=1e-4)


def test_pixart_uses_the_eps_half_and_t5_mask(tiny_bases):
    bb = load_backbone(tiny_bases("pixart"))
    cond = bb.encode_prompts(["a red circle", "the big blue square on the left"]).float()
    assert cond.mask is not None and cond.mask.shape == cond.embeds.shape[:2]
    assert int(cond.mask[0].sum()) < int(cond.mask[1].sum())  # padding is masked
    x, t = torch.randn(2, 4, 8, 8), torch.tensor([999, 5])
    with torch.no_grad():
        raw = bb.denoiser(x, encoder_hidden_states=cond.embeds, timestep=t, encoder_attention_mask=cond.mask,
                          added_cond_kwargs={"resolution": None, "aspect_ratio": None}).sample
        eps = bb.eps(bb.denoiser, x, t, cond)
    assert raw.shape[1] == 8 and eps.shape[1] == 4
    torch.testing.assert_close(eps, raw[:, :4])


def test_sd_text_features_have_no_attention_mask(tiny_bases):
    bb = load_backbone(tiny_bases("sd"))
    tok, enc = bb.text[0]
    ids = tok(["a red circle"], padding="max_length", max_length=tok.model_max_length, return_tensors="pt")
    with torch.no_grad():
        plain = enc(ids.input_ids).last_hidden_state
        masked = enc(ids.input_ids, attention_mask=ids.attention_mask).last_hidden_state
    got = bb.encode_prompts(["a red circle"])
    assert torch.equal(got.embeds, plain)  # what SD pipelines feed at inference
    assert not torch.allclose(plain, masked)  # the official training path (with mask) differs


def test_sdxl_pooled_time_ids_and_zero_null(tiny_bases):
    bb = load_backbone(tiny_bases("sdxl"))
    c = bb.encode_prompts(["a red circle"])
    assert c.embeds.shape[-1] == 16 and c.pooled.shape == (1, 16)  # 8 + 8 hidden, projection 16
    null = bb.null_cond()
    assert bb.force_zeros_null and float(null.embeds.abs().sum()) == 0 and float(null.pooled.abs().sum()) == 0
    x, t = torch.randn(1, 4, 8, 8), torch.tensor([500])
    with torch.no_grad():
        e = bb.eps(bb.denoiser, x, t, c.float())
        ids = torch.tensor([[16.0, 16, 0, 0, 16, 16]])
        want = bb.denoiser(x, t, encoder_hidden_states=c.embeds, added_cond_kwargs={
            "text_embeds": c.pooled, "time_ids": ids}).sample
    torch.testing.assert_close(e, want)


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


@pytest.mark.parametrize(("damage", "needle"), [
    (lambda f: shutil.rmtree(f / "vae"), "missing: vae/ (folder missing)"),
    (lambda f: (f / "unet" / "config.json").unlink(), "missing: unet/config.json"),
    (lambda f: [p.unlink() for p in (f / "text_encoder").glob("*.safetensors")], "text_encoder/ (no .safetensors"),
    (lambda f: shutil.rmtree(f / "tokenizer"), "tokenizer/ (folder missing)"),
    (lambda f: (f / "model_index.json").unlink(), "model_index.json is missing"),
    (lambda f: (f / "model_index.json").write_text("{"), "model_index.json is not valid JSON"),
    (lambda f: (f / "model_index.json").write_text(json.dumps({"_class_name": "FluxPipeline"})),
     "pipeline 'FluxPipeline' is not supported"),
])
def test_incomplete_base_folder_is_named(tiny_bases, tmp_path, damage, needle):
    f = _copy(tiny_bases("sd"), tmp_path / "base")
    damage(f)
    with pytest.raises(BaseModelError) as e:
        inspect_folder(f)
    assert needle in str(e.value)


def test_zero_terminal_snr_is_refused():
    with pytest.raises(BaseModelError, match="zero-terminal-SNR"):
        check_one_step_alpha_bar(0.0, "vsd.alpha_bar")
    check_one_step_alpha_bar(0.0047, "ok")


def test_alpha_bar_choice_is_recorded(tiny_bases, tmp_path):
    prompts = write_prompts(tmp_path / "p.txt", 6)
    for mode, want in (("scheduler", 0.0046601), ("official", 0.0047)):
        cfg = small_cfg(tiny_bases("sd"), prompts, tmp_path / mode, train__max_steps=1, vsd__alpha_bar=mode)
        d = Distiller(cfg, progress=False)
        out = d.run()
        f = load_lorad(out["student"])
        assert abs(f.one_step.alpha_bar_T - want) < 1e-6 and f.metadata["lorad.provenance.alpha_bar_source"] == mode
        assert f.one_step.timestep == 999 and f.one_step.prediction_type == "epsilon"
    assert load_file(str(out["student"]))
