"""Reading .lorad files for the nodes: validation errors name file and key; metadata -> one-step."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file
from wadi_lorad.nodes.lorad_file import LoRaDReadError, OneStep, onestep_from_metadata, read_lorad, summary_text


def write(path, tensors, meta=None):
    save_file(tensors, str(path), metadata=meta)
    return str(path)


def test_reads_layers_rank_arch_onestep(tmp_path):
    p = write(tmp_path / "s.lorad.safetensors",
              {"diffusion_model.a.lorad_A": torch.zeros(4, 2), "diffusion_model.a.lorad_B": torch.zeros(2, 3),
               "diffusion_model.b.lorad_theta": torch.zeros(4, 3)},
              {"lorad.arch": "stable-diffusion-v1", "wadi.timestep": "999", "wadi.alpha_bar_T": "0.0047",
               "wadi.prediction_type": "epsilon", "wadi.teacher_cfg": "4.5"})
    info = read_lorad(p)
    assert set(info.layers) == {"diffusion_model.a", "diffusion_model.b"} and info.rank == 2
    assert info.arch == "stable-diffusion-v1" and info.onestep == OneStep(999.0, 0.0047, "epsilon")
    text = summary_text(info)
    assert "t=999" in text and "alpha_bar_T=0.0047" in text and "wadi.teacher_cfg: 4.5" in text


@pytest.mark.parametrize("tensors,msg", [
    ({"x.lorad_A": torch.zeros(4, 2)}, "x.lorad_B is missing"),
    ({"x.lorad_A": torch.zeros(4, 2), "x.lorad_B": torch.zeros(3, 3)}, "disagree on the rank"),
    ({"x.lorad_theta": torch.full((4, 3), float("nan"))}, "x.lorad_theta contains NaN"),
    ({"x.lora_up.weight": torch.zeros(4, 2)}, "x.lora_up.weight"),
    ({"x.lorad_theta": torch.zeros(4, 3, dtype=torch.int32)}, "expected a float tensor"),
    ({"x.lorad_theta": torch.zeros(4, 3, 1)}, "expected a 2-D tensor"),
])
def test_bad_tensors_name_the_key(tmp_path, tensors, msg):
    p = write(tmp_path / "bad.lorad.safetensors", tensors)
    with pytest.raises(LoRaDReadError) as e:
        read_lorad(p)
    assert msg in str(e.value) and "bad.lorad.safetensors" in str(e.value)


def test_corrupt_and_missing_files(tmp_path):
    p = tmp_path / "c.lorad.safetensors"
    p.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(LoRaDReadError, match="c.lorad.safetensors: not a readable safetensors file"):
        read_lorad(str(p))
    with pytest.raises(LoRaDReadError, match="file not found"):
        read_lorad(str(tmp_path / "nope.lorad.safetensors"))


def test_metadata_values_are_checked():
    assert onestep_from_metadata({}) is None
    assert onestep_from_metadata({"wadi.alpha_bar_T": "0.0047"}) == OneStep(999.0, 0.0047, "epsilon")
    with pytest.raises(LoRaDReadError, match="not a number"):
        onestep_from_metadata({"wadi.timestep": "late"}, "f")
    with pytest.raises(LoRaDReadError, match="must be in"):
        onestep_from_metadata({"wadi.alpha_bar_T": "1.5"}, "f")
