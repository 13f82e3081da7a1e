"""Personalization (``wadi personalize``): what trains, the objectives by hand, stacking, stop/resume, bad input."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from finetune_helpers import personalize_cfg, tiny_world_fixture  # noqa: F401  (fixture)
from safetensors.torch import load_file
from wadi_lorad.lorad import functional, inject
from wadi_lorad.lorad.io import load_lorad
from wadi_lorad.trainer.backbones import BaseModelError, load_backbone
from wadi_lorad.trainer.config import ConfigError
from wadi_lorad.trainer.events import read_events
from wadi_lorad.trainer.imagefolder import ImageFolderError
from wadi_lorad.trainer.personalize import validate
from wadi_lorad.trainer.personalize_train import ADAPTER, Personalizer


def _base_weights(model) -> dict[str, torch.Tensor]:
    """Every parameter that is not a LoRaD adapter tensor (the frozen base)."""
    return {k: v.detach().clone() for k, v in model.named_parameters() if ".lorad." not in k}


def test_student_run_trains_only_its_adapter(tiny_world, tmp_path):
    """Short CI run on a student: base and student adapter unchanged; the exported file is the trained adapter."""
    cfg = personalize_cfg(tiny_world, tmp_path / "run", model__student=tiny_world["student"],
                          prior__enabled="true", prior__num_images=2, output__sample_every=3)
    p = Personalizer(cfg, progress=False)
    out = p.run()
    den = p.bb.denoiser
    fresh = load_backbone(tiny_world["base"], text=False, vae=False).denoiser
    want = {k: v for k, v in fresh.state_dict().items()}
    got = _base_weights(den)
    assert set(got) == set(want) and all(torch.equal(got[k], want[k]) for k in want)
    student = load_lorad(tiny_world["student"])
    from wadi_lorad.lorad.io import adapter_state_from_layers

    ref = adapter_state_from_layers("sd15", student.layers, "unet", student.layout)
    for name, t in inject.adapter_state(den, "student").items():
        assert torch.equal(t["A"], ref[name]["A"]) and torch.equal(t["B"], ref[name]["B"]), name
    trained = inject.adapter_state(den, ADAPTER)
    assert any(t["A"].abs().max() > 0 for t in trained.values())  # A starts at zero: it moved
    f = load_lorad(out["adapter"])
    md = f.metadata
    assert f.arch == "sd15" and f.rank == 2 and md["lorad.target_preset"] == "paper-student"
    assert md["modelspec.trigger_phrase"] == "a sks shape" and f.one_step is None
    assert md["lorad.provenance.trained_on"] == "student" and md["lorad.provenance.objective"] == "onestep"
    assert md["lorad.provenance.student_sha256"] == student.metadata["modelspec.hash_sha256"]
    back = adapter_state_from_layers("sd15", f.layers, "unet", f.layout)
    assert set(back) == set(trained) and all(torch.equal(back[k]["A"], trained[k]["A"]) for k in back)
    ev = read_events(tmp_path / "run" / "events.jsonl")
    steps = [e for e in ev if e["event"] == "step"]
    assert [e["step"] for e in steps] == [1, 2, 3] and all({"loss", "loss_instance", "loss_prior", "loss_x0",
                                                            "loss_eps", "it_s", "eta_s"} <= set(e) for e in steps)
    assert ev[-1]["event"] == "done" and (tmp_path / "run" / "samples" / "step-00000003.png").is_file()
    assert len(list((tmp_path / "run" / "class_images").glob("class-*.safetensors"))) == 1


def test_stacked_adapters_equal_sequential_rotation(tiny_world):
    """Student and personal adapter active together = the student's rotation merged, then the personal one."""
    bb = load_backbone(tiny_world["base"], text=False, vae=False)
    den = bb.denoiser
    from wadi_lorad.lorad.bridge import load_adapter

    load_adapter(den, "student", tiny_world["student"])
    inject.inject(den, "p", "paper-student", rank=3, seed=1)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for _, layer in inject.lorad_layers(den):
            layer.lorad["p"].A.copy_(torch.randn(layer.lorad["p"].A.shape, generator=g))
    # One layer, by hand: rotate(W, th_s + th_p) == rotate(rotate(W, th_s), th_p).
    _, layer = next(iter(inject.lorad_layers(den)))
    th_s, th_p = layer.lorad["student"].angles(), layer.lorad["p"].angles()
    w = layer.weight.detach()
    both = functional.rotate(w.double(), (th_s + th_p).double())
    seq = functional.rotate(functional.rotate(w.double(), th_s.double()), th_p.double())
    assert torch.allclose(both, seq, atol=1e-12)
    # The whole UNet: stacked on the fly vs student merged into the weights + personal on the fly.
    x = torch.randn(2, 4, 8, 8, generator=g)
    t = torch.tensor([999, 500])
    ctx = torch.randn(2, 77, 128, generator=g)
    with torch.no_grad(), inject.active_adapters(den, ("student", "p")):
        stacked = den(x, t, ctx).sample
    inject.merge(den, "student")
    with torch.no_grad(), inject.active_adapters(den, ("p",)):
        sequential = den(x, t, ctx).sample
    assert torch.allclose(stacked, sequential, atol=1e-4, rtol=1e-4)


def test_objectives_match_formulas_by_hand(tiny_world, tmp_path):
    """eps objective = MSE(eps, n); onestep objective = x0-MSE at T on its share + eps-MSE at random t."""
    p = Personalizer(personalize_cfg(tiny_world, tmp_path / "a", model__student=tiny_world["student"],
                                     objective__onestep_fraction=0.5), progress=False)
    p.setup()
    gen = torch.Generator().manual_seed(7)
    b = p.draw(gen, 4)
    b["at_T"] = torch.tensor([True, False, True, False])
    loss, parts = p.loss(b)
    bb, den = p.bb, p.bb.denoiser
    x0 = p.mean[b["idx"]] + p.std[b["idx"]] * b["z"]
    cond = p.captions.index(p.caption_idx[b["idx"]])
    t = torch.where(b["at_T"], torch.full_like(b["t"], 999), b["t"])
    ab = bb.alphas_cumprod.float()[t].view(-1, 1, 1, 1)
    x_t = ab.sqrt() * x0 + (1 - ab).sqrt() * b["noise"]
    with torch.no_grad():
        eps = den(x_t, t, cond.embeds).sample
    ab_T = float(bb.alphas_cumprod[999])
    x0_hat = (x_t - math.sqrt(1 - ab_T) * eps) / math.sqrt(ab_T)
    m = b["at_T"]
    want = F.mse_loss(x0_hat[m], x0[m]) + F.mse_loss(eps[~m], b["noise"][~m])
    assert torch.allclose(loss.detach(), want, rtol=1e-4) and parts["x0"] > parts["eps"]
    # The base-model objective: plain eps-MSE at the drawn t.
    q = Personalizer(personalize_cfg(tiny_world, tmp_path / "b"), progress=False)
    q.setup()
    b = q.draw(torch.Generator().manual_seed(8), 3)
    loss, _ = q.loss(b)
    x0 = q.mean[b["idx"]] + q.std[b["idx"]] * b["z"]
    ab = q.bb.alphas_cumprod.float()[b["t"]].view(-1, 1, 1, 1)
    x_t = ab.sqrt() * x0 + (1 - ab).sqrt() * b["noise"]
    with torch.no_grad():
        eps = q.bb.denoiser(x_t, b["t"], q.captions.index(q.caption_idx[b["idx"]]).embeds).sample
    assert torch.allclose(loss.detach(), F.mse_loss(eps, b["noise"]), rtol=1e-4)


def test_stop_file_then_resume_equals_uninterrupted_run(tiny_world, tmp_path, monkeypatch):
    ref = Personalizer(personalize_cfg(tiny_world, tmp_path / "ref", train__max_steps=4), progress=False)
    want = load_file(str(ref.run()["adapter"]))
    stop_at = {"step": 1}

    def after_step(self):  # a launcher asks the run to stop during step 2
        if self.step == stop_at["step"]:
            (self.out / "STOP").touch()

    monkeypatch.setattr(Personalizer, "after_step", after_step)
    cfg = personalize_cfg(tiny_world, tmp_path / "run", train__max_steps=4)
    assert Personalizer(cfg, progress=False).run() == {}
    ev = read_events(tmp_path / "run" / "events.jsonl")
    assert ev[-1]["event"] == "stopped" and ev[-1]["step"] == 2 and ev[-2]["event"] == "checkpoint"
    (tmp_path / "run" / "STOP").unlink()
    stop_at["step"] = -1
    cfg.resume = "latest"
    got = load_file(str(Personalizer(cfg, progress=False).run()["adapter"]))
    assert set(got) == set(want) and all(torch.equal(got[k], want[k]) for k in want)
    # A stop before training: no checkpoint, a 'stopped' record, nothing trained.
    (tmp_path / "early").mkdir()
    (tmp_path / "early" / "STOP").touch()
    assert Personalizer(personalize_cfg(tiny_world, tmp_path / "early"), progress=False).run() == {}
    assert read_events(tmp_path / "early" / "events.jsonl")[-1]["event"] == "stopped"
    assert not (tmp_path / "early" / "checkpoints").exists()


def test_bad_input_is_refused_before_training(tiny_world, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ImageFolderError, match=r"empty holds no images"):
        Personalizer(personalize_cfg(tiny_world, tmp_path / "o1", data__images=empty))
    half = tmp_path / "half"
    half.mkdir()
    for f in sorted(tiny_world["concept"].iterdir())[:4]:
        (half / f.name).write_bytes(f.read_bytes())
    (half / "000.txt").unlink()
    with pytest.raises(ImageFolderError, match=r"000.png: image without a caption"):
        Personalizer(personalize_cfg(tiny_world, tmp_path / "o2", data__images=half, data__captions="files"))
    with pytest.raises(BaseModelError, match="is not a folder"):
        Personalizer(personalize_cfg(tiny_world, tmp_path / "o3", model__base=tmp_path / "nope"))
    with pytest.raises(ConfigError, match="data.class_prompt: is required with prior.enabled"):
        validate(personalize_cfg(tiny_world, tmp_path / "o4", prior__enabled="true", data__class_prompt=""))
    with pytest.raises(ConfigError, match="'onestep' needs model.student"):
        validate(personalize_cfg(tiny_world, tmp_path / "o5", objective__kind="onestep"))
    with pytest.raises(ConfigError, match="does not exist"):
        Personalizer(personalize_cfg(tiny_world, tmp_path / "o6", model__student=tmp_path / "missing.lorad"))
    for i in range(6):  # nothing was created by any refused run
        assert not (tmp_path / f"o{i + 1}").exists()


def test_cli_reports_bad_input_in_one_line(tiny_world, tmp_path, capsys):
    from wadi_lorad.trainer.cli import main

    rc = main(["personalize", "--model.base", str(tiny_world["base"]), "--data.images", str(tmp_path),
               "--data.instance_prompt", "a sks shape", "--output.dir", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: data.images:") and "holds no images" in err
