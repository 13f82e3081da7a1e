"""State-dict I/O (every layout), atomic writes, merging angles into a state dict."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file
from wadi_lorad.lorad import checkpoint, functional, statekeys


def _state(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "down_blocks.0.attn.to_q.weight": torch.randn(8, 6, generator=g),
        "down_blocks.0.attn.to_q.bias": torch.randn(8, generator=g),
        "conv_in.weight": torch.randn(4, 2, 3, 3, generator=g),
    }


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_load_every_layout(tmp_path):
    st = _state()
    save_file(st, tmp_path / "m.safetensors")
    torch.save(st, tmp_path / "m.bin")
    torch.save({"state_dict": st, "global_step": torch.tensor(3)}, tmp_path / "m.ckpt")
    folder = tmp_path / "pipe" / "unet"
    folder.mkdir(parents=True)
    (tmp_path / "pipe" / "model_index.json").write_text("{}")
    (folder / "config.json").write_text(json.dumps({"sample_size": 8}))
    save_file(st, folder / checkpoint.DIFFUSERS_WEIGHTS)
    for p in ("m.safetensors", "m.bin", "m.ckpt", "pipe", "pipe/unet"):
        ck = checkpoint.load_state_dict(tmp_path / p)
        assert _same(ck.state, st), p
    assert checkpoint.load_state_dict(tmp_path / "pipe").config == {"sample_size": 8}
    # sharded folder
    sh = tmp_path / "sharded"
    sh.mkdir()
    keys = list(st)
    save_file({k: st[k] for k in keys[:1]}, sh / "diffusion_pytorch_model-00001-of-00002.safetensors")
    save_file({k: st[k] for k in keys[1:]}, sh / "diffusion_pytorch_model-00002-of-00002.safetensors")
    wm = {k: f"diffusion_pytorch_model-0000{1 if i == 0 else 2}-of-00002.safetensors" for i, k in enumerate(keys)}
    (sh / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps({"weight_map": wm}))
    assert _same(checkpoint.load_state_dict(sh).state, st)


def test_load_errors_name_the_file(tmp_path):
    with pytest.raises(checkpoint.CheckpointError, match="no such file"):
        checkpoint.load_state_dict(tmp_path / "nope.safetensors")
    (tmp_path / "bad.safetensors").write_bytes(b"garbage")
    with pytest.raises(checkpoint.CheckpointError, match="bad.safetensors"):
        checkpoint.load_state_dict(tmp_path / "bad.safetensors")
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(checkpoint.CheckpointError, match="unknown weights format"):
        checkpoint.load_state_dict(tmp_path / "x.txt")
    torch.save({"a": torch.zeros(1), "b": 3}, tmp_path / "mixed.pt")
    with pytest.raises(checkpoint.CheckpointError, match="not tensors"):
        checkpoint.load_state_dict(tmp_path / "mixed.pt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(checkpoint.CheckpointError, match="empty"):
        checkpoint.load_state_dict(tmp_path / "empty")


def test_atomic_writes_and_force(tmp_path):
    st = _state()
    p = checkpoint.save_safetensors(st, tmp_path / "a" / "m.safetensors", metadata={"k": "v"})
    with pytest.raises(FileExistsError, match="--force"):
        checkpoint.save_safetensors(_state(1), p)
    assert _same(checkpoint.load_state_dict(p).state, st)
    checkpoint.save_safetensors(_state(1), p, force=True)
    assert _same(checkpoint.load_state_dict(p).state, _state(1))
    d = checkpoint.write_diffusers_folder(st, tmp_path / "out", {"a": 1})
    with pytest.raises(FileExistsError):
        checkpoint.write_diffusers_folder(st, d, {"a": 1})
    checkpoint.write_diffusers_folder(_state(2), d, {"a": 2}, force=True)
    ck = checkpoint.load_state_dict(d)
    assert ck.config == {"a": 2} and _same(ck.state, _state(2))
    assert sorted(x.name for x in tmp_path.iterdir()) == ["a", "out"]  # no temp leftovers
    assert sorted(x.name for x in (tmp_path / "a").iterdir()) == ["m.safetensors"]


def test_merge_state_rotates_checks_and_is_all_or_nothing():
    st = _state()
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(8, 2, generator=g), torch.randn(2, 3, generator=g)
    theta = torch.randn(4, 9, generator=g) * 3  # dense angles beyond pi: the wrap matters at s = 0.5
    assert float(theta.abs().max()) > torch.pi
    layers = {"down_blocks.0.attn.to_q.weight": {"A": a, "B": b}, "conv_in.weight": {"theta": theta}}
    out = checkpoint.merge_state(st, layers, strength=0.5)
    assert torch.allclose(out["down_blocks.0.attn.to_q.weight"], functional.rotate(st["down_blocks.0.attn.to_q.weight"],
                                                                         functional.angles(a, b) * 0.5))
    # s * wrap(theta), as the trainer and every reader apply it (docs/lorad-format.md 3.5), not s * theta
    assert torch.allclose(out["conv_in.weight"], functional.rotate(st["conv_in.weight"], functional.wrap_angles(theta) * 0.5))
    assert out["down_blocks.0.attn.to_q.bias"] is st["down_blocks.0.attn.to_q.bias"]
    assert torch.equal(checkpoint.merge_state(st, layers, strength=0.0)["conv_in.weight"], st["conv_in.weight"])
    before = {k: v.clone() for k, v in st.items()}
    bad = {**layers, "missing.weight": {"theta": theta}, "down_blocks.0.attn.to_q.bias": {"theta": theta}}
    with pytest.raises(checkpoint.CheckpointError) as e:
        checkpoint.merge_state(st, bad)
    assert "missing.weight: not in the base model" in str(e.value)
    assert "down_blocks.0.attn.to_q.bias" in str(e.value)
    assert _same(st, before)
    nan = {"conv_in.weight": {"theta": torch.full((4, 9), float("nan"))}}
    with pytest.raises(checkpoint.CheckpointError, match="non-finite"):
        checkpoint.merge_state(st, nan)


def test_ldm_prefix_detection():
    assert statekeys.ldm_prefix(_state()) is None
    assert statekeys.ldm_prefix({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(1)}) == "model.diffusion_model."
    assert statekeys.ldm_prefix({"diffusion_model.input_blocks.0.0.weight": torch.zeros(1)}) == "diffusion_model."
    assert statekeys.ldm_prefix({"input_blocks.0.0.weight": torch.zeros(1)}) == ""
    full = {"model.diffusion_model.input_blocks.1.1.proj_in.weight": torch.zeros(4, 6, 1, 1),
            "model.diffusion_model.input_blocks.1.1.norm.weight": torch.zeros(4)}
    assert statekeys.weight_shapes_from_state("sd15", full) == {"diffusion_model.input_blocks.1.1.proj_in": (4, 6, 1, 1)}
    layers, other = statekeys.layers_for_state("sd15", {"diffusion_model.input_blocks.1.1.proj_in": {}, "text_encoders.x": {}},
                                        full)
    assert list(layers) == ["model.diffusion_model.input_blocks.1.1.proj_in.weight"] and other == ["text_encoders.x"]


def test_dense_theta_is_wrapped_before_strength_like_the_trainer():
    """Spec 3.5: s * wrap(theta) for dense layers too (4.0 at s=0.5 is -1.1416 rad, not 2.0)."""
    import math

    from wadi_lorad.lorad.checkpoint import layer_angles

    w = torch.tensor([[1.0, 2.0]])
    theta = torch.tensor([[4.0]])
    t = 0.5 * (4.0 - 2 * math.pi)
    want = torch.tensor([[math.cos(t) * 1 - math.sin(t) * 2, math.sin(t) * 1 + math.cos(t) * 2]])
    assert float(layer_angles({"theta": theta})) == pytest.approx(4.0 - 2 * math.pi)
    out = checkpoint.merge_state({"l.weight": w}, {"l.weight": {"theta": theta}}, strength=0.5)
    assert torch.allclose(out["l.weight"], want, atol=1e-6)
