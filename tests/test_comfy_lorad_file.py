"""The nodes' view of a .lorad file (read by lorad.io): one-step settings, summary, errors."""

from __future__ import annotations

import pytest
import torch
from wadi_lorad.lorad import io as lorad_io
from wadi_lorad.nodes.lorad_file import LoRaDReadError, OneStep, read_lorad, summary_text

KEY = "diffusion_model.input_blocks.1.1.transformer_blocks.0.attn1.to_q"  # SD1.5: (320, 320)


def write(path, one_step=None, layers=None):
    layers = layers or {KEY: {"A": torch.randn(320, 4) * 0.1, "B": torch.randn(4, 160)}}
    md = lorad_io.build_metadata(arch="sd15", rank=4, target_preset="paper-student", title="t", one_step=one_step,
                            provenance={"teacher_cfg": 4.5})
    return str(lorad_io.save_lorad(path, layers, md))


def test_student_file_gives_onestep_and_summary(tmp_path):
    info = read_lorad(write(tmp_path / "s.lorad.safetensors",
                            {"timestep": 999, "alpha_bar_T": 0.0047, "prediction_type": "epsilon"}))
    assert info.arch == "sd15" and info.rank == 4 and set(info.layers) == {KEY}
    assert info.onestep == OneStep(999.0, 0.0047, "epsilon")
    text = summary_text(info)
    assert "t=999, alpha_bar_T=0.0047" in text and "lorad.provenance.teacher_cfg: 4.5" in text
    assert "base arch: sd15" in text and "rank: 4" in text


def test_adapter_without_onestep(tmp_path):
    info = read_lorad(write(tmp_path / "p.lorad.safetensors"))
    assert info.onestep is None and "not a WaDi student" in summary_text(info)


def test_errors_name_the_file(tmp_path):
    p = tmp_path / "c.lorad.safetensors"
    p.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json" + b"\0" * 16)
    with pytest.raises(LoRaDReadError, match="c.lorad.safetensors"):
        read_lorad(str(p))
    with pytest.raises(LoRaDReadError, match="nope.lorad.safetensors"):
        read_lorad(str(tmp_path / "nope.lorad.safetensors"))
    q = tmp_path / "plain.safetensors"
    from safetensors.torch import save_file

    save_file({KEY + ".lorad_theta": torch.zeros(320, 160)}, str(q))
    with pytest.raises(LoRaDReadError, match="not a LoRaD file"):
        read_lorad(str(q))


def test_factors_stay_in_the_file_dtype(tmp_path):
    """No fp32 copy of every factor: an fp16 file is held as fp16 (rotation math still runs in fp32)."""
    layers = {KEY: {"A": torch.randn(320, 4) * 0.1, "B": torch.randn(4, 160)}}
    md = lorad_io.build_metadata(arch="sd15", rank=4, target_preset="paper-student", title="t")
    path = lorad_io.save_lorad(tmp_path / "h.lorad.safetensors", layers, md, dtype=torch.float16)
    info = read_lorad(str(path))
    assert {t.dtype for t in info.layers[KEY].values()} == {torch.float16}
    from wadi_lorad.lorad.layer_spec import LayerSpec

    w = torch.randn(320, 320)
    fp32 = {k: v.float() for k, v in info.layers[KEY].items()}
    assert torch.equal(LayerSpec.from_parts(info.layers[KEY], KEY).rotated(w, 0.7),
                       LayerSpec.from_parts(fp32, KEY).rotated(w, 0.7))  # same angles as an fp32 copy


def test_info_panel_reads_the_header_alone(tmp_path):
    """The panel's summary needs no tensor bytes: a file whose data was damaged still shows its metadata
    (the full read refuses it by its hash), and the tensors come back on the meta device."""
    path = write(tmp_path / "s.lorad.safetensors", {"timestep": 999, "alpha_bar_T": 0.0047, "prediction_type": "epsilon"})
    raw = bytearray(open(path, "rb").read())
    raw[-1] ^= 0xFF  # flip the last data byte
    open(path, "wb").write(bytes(raw))
    with pytest.raises(LoRaDReadError, match="hash"):
        read_lorad(path)
    info = read_lorad(path, header_only=True)
    assert all(t.device.type == "meta" for t in info.layers[KEY].values())
    assert info.onestep == OneStep(999.0, 0.0047, "epsilon") and "rank: 4" in summary_text(info)


def test_load_info_reads_a_file_once_until_it_changes(tmp_path, monkeypatch):
    """A strength change re-runs Load LoRaD: the validated file is reused (as ComfyUI's LoraLoader keeps its
    last LoRA) while path, size, mtime and inode are the same; a replaced or damaged file is read again."""
    import os

    import comfy_env

    comfy_env.comfy_for_tests()
    from wadi_lorad.nodes import patching

    path = write(tmp_path / "s.lorad.safetensors")
    monkeypatch.setattr(patching, "full_path", lambda name: path)
    monkeypatch.setattr(patching, "_LAST", [])
    reads = []
    real = patching.read_lorad
    monkeypatch.setattr(patching, "read_lorad", lambda p, header_only=False: reads.append(p) or real(p, header_only))
    first = patching.load_info("s.lorad.safetensors")
    assert patching.load_info("s.lorad.safetensors") is first and len(reads) == 1
    os.replace(write(tmp_path / "new.lorad.safetensors", {"timestep": 999, "alpha_bar_T": 0.0047,
                                                          "prediction_type": "epsilon"}), path)
    second = patching.load_info("s.lorad.safetensors")
    assert second is not first and second.onestep == OneStep(999.0, 0.0047, "epsilon") and len(reads) == 2
    with open(path, "r+b") as f:  # damaged in place: the size stays, the mtime moves
        f.seek(-4, os.SEEK_END)
        f.write(b"\xff\xff\xff\xff")
    os.utime(path, ns=(os.stat(path).st_atime_ns, os.stat(path).st_mtime_ns + 1_000_000))
    with pytest.raises(LoRaDReadError, match="s.lorad.safetensors"):
        patching.load_info("s.lorad.safetensors")
    assert patching.load_info("s.lorad.safetensors", header_only=True).layers  # the panel's read is never cached
