"""End-to-end distillation runs on a tiny random-init SD folder: outputs, export, EMA, bad input."""

from __future__ import annotations

import pytest
import torch
from distill_helpers import small_cfg, tiny_bases_fixture, write_prompts  # noqa: F401  (fixture)
from wadi_lorad.lorad import inject
from wadi_lorad.lorad.io import load_lorad
from wadi_lorad.trainer.backbones import BaseModelError, load_backbone
from wadi_lorad.trainer.cmd_sample import load_student, one_step_params
from wadi_lorad.trainer.distill import Distiller, OutputExistsError
from wadi_lorad.trainer.events import read_events
from wadi_lorad.trainer.prompts import PromptFileError
from wadi_lorad.trainer.sampling import one_step, seeded_noise
from wadi_lorad.trainer.textcache import encode_cached


def test_short_distillation_end_to_end(tiny_bases, tmp_path):
    """The CI end-to-end run: train, sample, checkpoint, export; the file reproduces the student exactly."""
    base = tiny_bases("sd")
    cfg = small_cfg(base, write_prompts(tmp_path / "p.txt"), tmp_path / "run", train__max_steps=3,
                    output__sample_every=2, output__checkpoint_every=2, output__export_merged="true",
                    output__export_fake="true", output__num_samples=3)
    d = Distiller(cfg, progress=False)
    out = d.run()
    run = tmp_path / "run"
    assert {"student", "fake", "merged"} <= set(out)
    assert (run / "samples" / "step-00000002.png").is_file() and (run / "samples" / "step-00000003.png").is_file()
    assert [p.name for p in sorted((run / "checkpoints").iterdir())] == ["step-00000002", "step-00000003"]
    ev = read_events(run / "events.jsonl")
    kinds = [e["event"] for e in ev]
    assert kinds[0] == "start" and kinds[-1] == "done" and kinds.count("step") == 3
    assert {"sample", "checkpoint", "export"} <= set(kinds)
    steps = [e for e in ev if e["event"] == "step"]
    assert [e["step"] for e in steps] == [1, 2, 3]
    assert all({"loss_student", "loss_fake", "lr_student", "lr_fake", "it_s", "eta_s"} <= set(e) for e in steps)
    assert steps[0]["lr_student"] == 1e-4 and steps[0]["lr_fake"] == 1e-2
    # Metadata: one-step parameters and provenance.
    f = load_lorad(out["student"])
    assert (f.one_step.timestep, f.one_step.alpha_bar_T, f.one_step.prediction_type) == (
        999, d.settings.alpha_bar_T, "epsilon")
    md = f.metadata
    assert f.arch == "sd15" and f.rank == 4 and md["lorad.target_preset"] == "paper-student"
    assert md["lorad.provenance.steps"] == "3" and float(md["lorad.provenance.student_lr"]) == 1e-4
    assert float(md["lorad.provenance.teacher_cfg"]) == 1.5 and md["lorad.provenance.seed"] == "0"
    assert md["lorad.provenance.base_fingerprint"] == d.base_fp
    assert md["lorad.provenance.alpha_bar_source"] == "scheduler"
    # what beyond the paper shaped the student travels with it
    assert int(md["lorad.provenance.timestep"]) == d.cfg.vsd.timestep
    assert float(md["lorad.provenance.regression_weight"]) == d.cfg.vsd.regression_weight
    assert float(md["lorad.provenance.conv_lr_scale"]) == d.cfg.optim.conv_lr_scale
    assert load_lorad(out["fake"]).one_step is None
    # The exported file on a freshly loaded base reproduces the trained student's one-step output exactly.
    noise = seeded_noise([5, 6], d.latent)
    cond = d.sample_cond.index(slice(0, 2))
    with d.views.student_view() as m:
        want = one_step(d.bb, m, cond, noise, d.settings.alpha_bar_T)
    bb2 = load_backbone(base)
    f2 = load_student(bb2, out["student"])
    T, ab = one_step_params(f2, bb2, None, None)
    inject.set_active(bb2.denoiser, "student")
    got = one_step(bb2, bb2.denoiser, cond, noise, ab, T)
    assert torch.equal(got, want)
    # The merged diffusers folder gives the same output (rotation baked into the weights).
    bb3 = load_backbone(out["merged"])
    torch.testing.assert_close(one_step(bb3, bb3.denoiser, cond, noise, ab, T), want, rtol=1e-5, atol=1e-5)
    with d.views.teacher() as m:
        assert not torch.allclose(one_step(d.bb, m, cond, noise, ab), want)


def test_single_file_checkpoint_has_ldm_keys(tiny_bases, tmp_path):
    from wadi_lorad.lorad import keymap
    from wadi_lorad.lorad.bridge import model_layout
    from wadi_lorad.trainer.config import ConfigError
    from wadi_lorad.trainer.export import merged_denoiser
    from wadi_lorad.trainer.singlefile import single_file_state

    base = tiny_bases("sd")
    # The tiny UNet is narrower than SD1.x, so ComfyUI could not detect it: the export is refused before training.
    with pytest.raises(ConfigError, match="Could not detect model type': cross_attention_dim"):
        Distiller(small_cfg(base, write_prompts(tmp_path / "p.txt"), tmp_path / "x", output__export_single_file="true"))
    assert not (tmp_path / "x").exists()
    # The key layout itself, on the tiny UNet (a full-width one loads in ComfyUI: test_distill_comfyui.py).
    cfg = small_cfg(base, write_prompts(tmp_path / "p.txt"), tmp_path / "run", train__max_steps=1,
                    vsd__fake_guidance_scale=1.0)
    d = Distiller(cfg, progress=False)
    d.run()
    unet = merged_denoiser(d.views)
    sd = {k: v.contiguous() for k, v in single_file_state(unet, base).items()}
    km = keymap.unet_keymap("sd15", model_layout("sd15", unet))
    back = {km.diffusers(k[len("model.diffusion_model."):]): v for k, v in sd.items()
            if k.startswith("model.diffusion_model.")}
    assert back.keys() == unet.state_dict().keys()
    assert all(torch.equal(back[k], v) for k, v in unet.state_dict().items())
    assert "model.diffusion_model.input_blocks.0.0.weight" in sd and "model.diffusion_model.out.2.weight" in sd
    assert "model.diffusion_model.input_blocks.1.0.in_layers.0.weight" in sd  # ResBlock renamed the ldm way
    assert any(k.startswith("cond_stage_model.transformer.text_model.") for k in sd)
    assert "first_stage_model.decoder.up_blocks.0.resnets.0.norm1.weight" in sd  # diffusers VAE, ComfyUI converts
    with pytest.raises(ConfigError, match="SD1.x bases only"):
        Distiller(small_cfg(tiny_bases("sdxl"), write_prompts(tmp_path / "p.txt"), tmp_path / "x",
                            output__export_single_file="true"))


def test_ema_weights_are_exported(tiny_bases, tmp_path):
    cfg = small_cfg(tiny_bases("sd"), write_prompts(tmp_path / "p.txt"), tmp_path / "run", train__max_steps=3,
                    train__ema_decay=0.5, vsd__fake_guidance_scale=1.0)
    d = Distiller(cfg, progress=False)
    out = d.run()
    from wadi_lorad.lorad.io import adapter_state_from_layers

    state = adapter_state_from_layers("sd15", load_lorad(out["student"]).layers,
                                      layout=load_lorad(out["student"]).layout)
    assert state and d.ema.updates == 3
    for name, layer in state.items():
        assert torch.equal(layer["A"], d.ema.shadow[f"{name}.A"]) and torch.equal(layer["B"], d.ema.shadow[f"{name}.B"])
    raw = inject.adapter_state(d.views.base, "student")
    assert any(not torch.equal(raw[n]["A"], state[n]["A"]) for n in state)  # EMA differs from the last weights


def test_resume_in_process_is_exact(tiny_bases, tmp_path):
    base, prompts = tiny_bases("sd"), write_prompts(tmp_path / "p.txt")
    full = Distiller(small_cfg(base, prompts, tmp_path / "a", train__max_steps=4, vsd__fake_guidance_scale=1.2),
                     progress=False)
    full.run()
    first = Distiller(small_cfg(base, prompts, tmp_path / "b", train__max_steps=2, vsd__fake_guidance_scale=1.2),
                      progress=False)
    first.run()
    again = Distiller(small_cfg(base, prompts, tmp_path / "b", train__max_steps=4, vsd__fake_guidance_scale=1.2,
                                resume="latest"), progress=False)
    again.run()
    assert again.step == 4
    for part in ("student", "fake"):
        a, b = getattr(full.views, part).state(), getattr(again.views, part).state()
        assert all(torch.equal(a[k], b[k]) for k in a), part
    assert [e["event"] for e in read_events(tmp_path / "b" / "events.jsonl")].count("resume") == 1


def test_resume_from_another_config_or_base_is_refused(tiny_bases, tmp_path):
    base, prompts = tiny_bases("sd"), write_prompts(tmp_path / "p.txt")
    Distiller(small_cfg(base, prompts, tmp_path / "run", train__max_steps=1), progress=False).run()
    with pytest.raises(ValueError, match=r"different config: optim.student_lr: checkpoint 0.0001 vs now 0.0002"):
        Distiller(small_cfg(base, prompts, tmp_path / "run", optim__student_lr=2e-4, resume="latest"))
    with pytest.raises(ValueError, match="trained on another base model"):
        Distiller(small_cfg(tiny_bases("sd", seed=1), prompts, tmp_path / "run", resume="latest"))
    with pytest.raises(ValueError, match="global batch was 2"):
        Distiller(small_cfg(base, prompts, tmp_path / "run", train__grad_accum=2, resume="latest"))
    with pytest.raises(ValueError, match="not a complete checkpoint folder"):
        Distiller(small_cfg(base, prompts, tmp_path / "run", resume=str(tmp_path / "nope")))
    # Without resume or force an existing run is not overwritten.
    with pytest.raises(OutputExistsError, match="--resume latest"):
        Distiller(small_cfg(base, prompts, tmp_path / "run"))


def test_bad_inputs_fail_before_any_model_is_loaded(tiny_bases, tmp_path):
    base = tiny_bases("sd")
    with pytest.raises(PromptFileError, match="does not exist"):
        Distiller(small_cfg(base, tmp_path / "none.txt", tmp_path / "r1"))
    (tmp_path / "empty.txt").write_text("\n\n")
    with pytest.raises(PromptFileError, match="no prompts found"):
        Distiller(small_cfg(base, tmp_path / "empty.txt", tmp_path / "r2"))
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(base, broken)
    shutil.rmtree(broken / "text_encoder")
    with pytest.raises(BaseModelError, match=r"is missing: text_encoder/ \(folder missing\)"):
        Distiller(small_cfg(broken, write_prompts(tmp_path / "p.txt"), tmp_path / "r3"))
    assert not (tmp_path / "r1").exists() and not (tmp_path / "r3").exists()  # nothing written


def test_full_disk_during_checkpoint_keeps_the_previous_one(tiny_bases, tmp_path, monkeypatch):
    from wadi_lorad.trainer import checkpoint as trainer_checkpoint

    cfg = small_cfg(tiny_bases("sd"), write_prompts(tmp_path / "p.txt"), tmp_path / "run", train__max_steps=3,
                    output__checkpoint_every=1, output__keep_checkpoints=1)
    d = Distiller(cfg, progress=False, log=lambda *a: None)
    d.setup()
    d.train_step()
    first = d.save_checkpoint()
    before = {p.name: p.read_bytes() for p in first.iterdir()}
    real_save = trainer_checkpoint.torch.save

    def full_disk(obj, f, *a, **k):
        real_save(obj, f, *a, **k)  # part of the data is written ...
        raise OSError(28, "No space left on device")  # ... then the disk is full
    monkeypatch.setattr(trainer_checkpoint.torch, "save", full_disk)
    d.train_step()
    assert d.save_checkpoint() is None
    monkeypatch.setattr(trainer_checkpoint.torch, "save", real_save)
    root = tmp_path / "run" / "checkpoints"
    assert [p.name for p in root.iterdir()] == ["step-00000001"]  # no torn or temp folder left
    assert {p.name: p.read_bytes() for p in first.iterdir()} == before
    assert any(e["event"] == "error" and "No space" in e["message"]
               for e in read_events(tmp_path / "run" / "events.jsonl"))
    assert trainer_checkpoint.find_resume("latest", tmp_path / "run") == first


def test_text_cache_is_reused_and_keyed_by_encoder(tmp_path):
    from wadi_lorad.trainer.backbones import TextCond

    calls = []

    def enc(ps):
        calls.append(list(ps))
        return TextCond(torch.stack([torch.full((3, 2), float(len(p))) for p in ps]))

    a, n = encode_cached(["ab", "c", "ab"], enc, tmp_path, "id1", progress=False)
    assert n == 2 and calls == [["ab", "c"]] and a.embeds[:, 0, 0].tolist() == [2.0, 1.0, 2.0]
    b, n = encode_cached(["c", "ab"], enc, tmp_path, "id1", progress=False)
    assert n == 0 and len(calls) == 1 and b.embeds[:, 0, 0].tolist() == [1.0, 2.0]
    _, n = encode_cached(["c"], enc, tmp_path, "id2", progress=False)  # another encoder: encoded again
    assert n == 1 and len(list(tmp_path.glob("text-*.safetensors"))) == 2


def test_cached_features_equal_fresh_ones(tiny_bases, tmp_path):
    bb = load_backbone(tiny_bases("sd"))
    ps = ["a red circle", "blue square"]
    for _ in range(2):
        c, _ = encode_cached(ps, bb.encode_prompts, tmp_path, bb.encoder_identity(), progress=False)
        assert torch.equal(c.embeds, bb.encode_prompts(ps).embeds.float())


def test_wadi_sample_cli(tiny_bases, tmp_path):
    from wadi_lorad.trainer.cli import main

    base = tiny_bases("sd")
    out = Distiller(small_cfg(base, write_prompts(tmp_path / "p.txt"), tmp_path / "run", train__max_steps=1),
                    progress=False).run()
    png = tmp_path / "s.png"
    rc = main(["sample", "--base", str(base), "--lorad", str(out["student"]), "--prompt", "a red circle",
               "--prompt", "blue square", "--compare", "--teacher-steps", "3", "--out", str(png)])
    assert rc == 0 and png.stat().st_size > 0
    assert main(["sample", "--base", str(base), "--lorad", str(out["student"]), "--prompt", "x",
                 "--out", str(png)]) == 2  # exists without --force
    bad = tmp_path / "bad.lorad.safetensors"
    bad.write_bytes(b"not a safetensors file")
    assert main(["sample", "--base", str(base), "--lorad", str(bad), "--prompt", "x", "--out",
                 str(tmp_path / "t.png")]) == 2


def test_wadi_sample_stacks_further_adapters(tiny_bases, tmp_path):
    """--adapter FILE[:STRENGTH] stacks on the student (angles add): the student's own file at -1
    cancels it exactly, so the stacked one-step output IS the teacher's."""
    from wadi_lorad.trainer.cli import main
    from wadi_lorad.trainer.cmd_sample import load_extra_adapters, parse_adapter_spec

    assert parse_adapter_spec("a.lorad.safetensors") == ("a.lorad.safetensors", 1.0)
    assert parse_adapter_spec("C:/x/a.lorad.safetensors:0.8") == ("C:/x/a.lorad.safetensors", 0.8)
    assert parse_adapter_spec("C:/x/a.lorad.safetensors") == ("C:/x/a.lorad.safetensors", 1.0)
    base = tiny_bases("sd")
    out = Distiller(small_cfg(base, write_prompts(tmp_path / "p.txt"), tmp_path / "run", train__max_steps=2),
                    progress=False).run()
    bb = load_backbone(base)
    f = load_student(bb, out["student"])
    T, ab = one_step_params(f, bb, None, None)
    extras = load_extra_adapters(bb, [f"{out['student']}:-1"])
    cond = bb.encode_prompts(["a red circle", "blue square"]).float()
    noise = seeded_noise([1, 2], bb.latent_shape(0))
    with inject.active_adapters(bb.denoiser, None):
        teacher = one_step(bb, bb.denoiser, cond, noise, ab, T)
    with inject.active_adapters(bb.denoiser, ("student",)):
        student = one_step(bb, bb.denoiser, cond, noise, ab, T)
    with inject.active_adapters(bb.denoiser, ("student", *extras)):
        stacked = one_step(bb, bb.denoiser, cond, noise, ab, T)
    assert torch.equal(stacked, teacher) and not torch.equal(student, teacher)
    png = tmp_path / "s.png"
    assert main(["sample", "--base", str(base), "--lorad", str(out["student"]), "--adapter",
                 f"{out['student']}:0.5", "--prompt", "x", "--compare", "--teacher-steps", "2",
                 "--out", str(png)]) == 0 and png.stat().st_size > 0
    assert main(["sample", "--base", str(base), "--lorad", str(out["student"]), "--adapter",
                 str(tmp_path / "missing.lorad.safetensors"), "--prompt", "x", "--out", str(tmp_path / "m.png")]) == 2


def test_uncached_prompts_are_encoded_per_batch(tiny_bases, tmp_path):
    """``data.cache_text false`` (huge prompt sets): same training as with the cache, encoders kept."""
    base, prompts = tiny_bases("sd"), write_prompts(tmp_path / "p.txt")
    runs = []
    for cache in ("true", "false"):
        d = Distiller(small_cfg(base, prompts, tmp_path / f"run-{cache}", train__max_steps=2,
                                data__cache_text=cache, vsd__fake_guidance_scale=1.2), progress=False)
        d.run()
        runs.append(d)
    assert runs[0].table is not None and runs[0].bb.text == []
    assert runs[1].table is None and runs[1].bb.text and not (tmp_path / "run-false" / ".text_cache").exists()
    a, b = runs[0].views.student.state(), runs[1].views.student.state()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_gradient_accumulation_equals_the_full_batch(tiny_bases, tmp_path):
    """batch 4 in one micro-batch == batch 2 x grad_accum 2: the update depends on the global batch only."""
    base, prompts = tiny_bases("sd"), write_prompts(tmp_path / "p.txt")
    runs = []
    for bs, acc in ((4, 1), (2, 2)):
        d = Distiller(small_cfg(base, prompts, tmp_path / f"b{bs}", train__batch_size=bs, train__grad_accum=acc,
                                train__max_steps=3, vsd__fake_guidance_scale=1.2), progress=False)
        d.run()
        runs.append(d)
    for part in ("student", "fake"):
        a, b = getattr(runs[0].views, part).state(), getattr(runs[1].views, part).state()
        moved = torch.cat([v.flatten() for k, v in a.items() if k.endswith(".A")]).norm()
        diff = torch.cat([(a[k] - b[k]).flatten() for k in a]).norm()
        assert moved > 0 and diff / moved < 1e-3, (part, float(diff / moved))


def test_stop_file_stops_cleanly_and_resume_finishes_exactly(tiny_bases, tmp_path):
    """The jobs contract: the stop file ends the run after the current step with a checkpoint and a
    ``stopped`` event; resuming then reaches the same weights as an uninterrupted run."""
    base, prompts = tiny_bases("sd"), write_prompts(tmp_path / "p.txt")
    over = dict(train__max_steps=4, vsd__fake_guidance_scale=1.2)
    full = Distiller(small_cfg(base, prompts, tmp_path / "a", **over), progress=False)
    full.run()
    d = Distiller(small_cfg(base, prompts, tmp_path / "b", **over), progress=False)
    step = d.train_step

    def step_then_ask_to_stop():
        logs = step()
        if d.step == 2:
            (tmp_path / "b" / "STOP").touch()
        return logs

    d.train_step = step_then_ask_to_stop
    assert d.run() == {}
    assert d.step == 2
    ev = read_events(tmp_path / "b" / "events.jsonl")
    assert [e["event"] for e in ev][-2:] == ["checkpoint", "stopped"] and ev[-1]["step"] == 2
    assert not (tmp_path / "b" / "student.lorad.safetensors").exists()
    (tmp_path / "b" / "STOP").unlink()
    again = Distiller(small_cfg(base, prompts, tmp_path / "b", resume="latest", **over), progress=False)
    again.run()
    for part in ("student", "fake"):
        a, b = getattr(full.views, part).state(), getattr(again.views, part).state()
        assert all(torch.equal(a[k], b[k]) for k in a), part


def test_stop_during_setup_exits_before_training(tiny_bases, tmp_path, monkeypatch):
    base, prompts = tiny_bases("sd"), write_prompts(tmp_path / "p.txt")
    stop = tmp_path / "stop-request"
    monkeypatch.setenv("WADI_STOP_FILE", str(stop))
    d = Distiller(small_cfg(base, prompts, tmp_path / "run"), progress=False)
    stop.touch()
    assert d.run() == {} and d.step == 0
    ev = read_events(tmp_path / "run" / "events.jsonl")
    assert [e["event"] for e in ev] == ["stopped"]
    assert not (tmp_path / "run" / "checkpoints").exists()
