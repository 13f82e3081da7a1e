"""``wadi pretrain`` / ``wadi eval``: config handling, refusal to overwrite, exact resume, CLI wiring."""

from __future__ import annotations

import pytest
import torch
from wadi_lorad.trainer import cli, pretrain
from wadi_lorad.trainer.tinyworld import classifier as tinyworld_classifier
from wadi_lorad.trainer.tinyworld import stages


def test_config_yaml_and_overrides(tmp_path):
    y = tmp_path / "c.yaml"
    y.write_text("unet_steps: 10\nvae_lr: 0.002\nforce: true\n")
    cfg = pretrain.load_config(str(y), ["--unet_steps", "12", "--stage", "vae"])
    assert cfg.unet_steps == 12 and cfg.vae_lr == 0.002 and cfg.force is True and cfg.stages() == ("vae",)
    assert cfg.export.endswith("export")


@pytest.mark.parametrize(
    ("yaml_text", "overrides", "match"),
    [
        ("unet_stepz: 3\n", [], "unet_stepz"),
        ("unet_steps: many\n", [], "unet_steps"),
        ("", ["--vae_batch", "2.5"], "vae_batch"),
        ("", ["--stage", "bogus"], "stage"),
        ("", ["--nope", "1"], "--nope"),
        ("- a\n- b\n", [], "mapping"),
    ],
)
def test_config_errors_name_the_field(tmp_path, yaml_text, overrides, match):
    y = tmp_path / "c.yaml"
    y.write_text(yaml_text)
    with pytest.raises(ValueError, match=match):
        pretrain.load_config(str(y), overrides)


def test_existing_products_need_force(tmp_path):
    export = tmp_path / "export"
    (export / "teacher").mkdir(parents=True)
    cfg = pretrain.load_config(None, ["--output", str(tmp_path / "o"), "--export", str(export), "--stage", "unet"])
    with pytest.raises(FileExistsError, match="--force"):
        pretrain.run(cfg)


def _clf_args(tmp_path, name: str) -> list[str]:
    return ["--stage", "classifier", "--output", str(tmp_path / name), "--export", str(tmp_path / name / "x"),
            "--clf_steps", "4", "--clf_batch", "8", "--checkpoint_every", "2", "--threads", "1"]  # fmt: skip


def test_classifier_stage_resumes_exactly(tmp_path, monkeypatch):
    pretrain.run(pretrain.load_config(None, _clf_args(tmp_path, "straight")))
    reference = tinyworld_classifier.load_classifier(tmp_path / "straight" / "x" / "classifier.safetensors").state_dict()

    real_lr = tinyworld_classifier.cosine_lr

    def crash_at_step_3(step, *a, **k):
        if step == 3:
            raise KeyboardInterrupt  # as if the run were killed after the step-2 checkpoint
        return real_lr(step, *a, **k)

    monkeypatch.setattr(stages.classifier, "cosine_lr", crash_at_step_3)
    with pytest.raises(KeyboardInterrupt):
        pretrain.run(pretrain.load_config(None, _clf_args(tmp_path, "resumed")))
    assert torch.load(tmp_path / "resumed" / "classifier" / "checkpoint.pt", weights_only=False)["step"] == 2
    monkeypatch.setattr(stages.classifier, "cosine_lr", real_lr)
    pretrain.run(pretrain.load_config(None, _clf_args(tmp_path, "resumed")))
    resumed = tinyworld_classifier.load_classifier(tmp_path / "resumed" / "x" / "classifier.safetensors").state_dict()
    assert all(torch.equal(reference[k], resumed[k]) for k in reference)

    # A checkpoint from another config is refused, naming what differs.
    args = _clf_args(tmp_path, "resumed")
    args[args.index("--clf_batch") + 1] = "16"
    with pytest.raises(ValueError, match="clf_batch"):
        pretrain.run(pretrain.load_config(None, args + ["--force"]))


def test_cli_registers_pretrain_and_eval(capsys):
    parser = cli.build_parser()
    ns = parser.parse_args(["pretrain", "--unet_steps", "5", "--force"])
    assert ns.cfg_unet_steps == "5" and ns.cfg_force == "true"
    ns = parser.parse_args(["eval", "--mode", "onestep", "--seeds", "0,3", "--n", "16"])
    assert ns.seeds == [0, 3] and ns.n == 16
    with pytest.raises(SystemExit):
        parser.parse_args(["eval", "--seeds", "x"])
