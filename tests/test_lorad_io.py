"""The .lorad.safetensors reader/writer: round trips, every validation error, no-overwrite, atomic writes."""

from __future__ import annotations

import json
import struct

import pytest
import torch
from safetensors.torch import save_file
from wadi_lorad.lorad import io as lorad_io
from wadi_lorad.lorad import keymap
from wadi_lorad.lorad.bridge import export_adapter, load_adapter, model_layout
from wadi_lorad.lorad.convert import describe
from wadi_lorad.lorad.inject import adapter_state, inject, set_active
from wadi_lorad.lorad.metadata import build_metadata


def tiny_unet(seed: int = 0):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    return UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(32, 64), layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32, attention_head_dim=8, norm_num_groups=8,
    ).eval()


def student(seed: int = 0, rank: int = 4):
    model = tiny_unet()
    inject(model, "student", "paper-student", rank=rank)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for t in adapter_state(model, "student").values():
            t["A"].copy_(torch.randn(t["A"].shape, generator=g) * 0.3)  # A is zero-initialised: make it nonzero
    return model


def unet_out(model):
    g = torch.Generator().manual_seed(1)
    x, c = torch.randn(1, 4, 8, 8, generator=g), torch.randn(1, 5, 32, generator=g)
    with torch.no_grad():
        return model(x, torch.tensor([999]), c).sample


def meta(rank="4", **kw):
    md = {"lorad.format_version": "1.0", "lorad.architecture": "sd15", "lorad.pairing": "adjacent", "lorad.rank": rank}
    md.update(kw)
    return md


KEY = "diffusion_model.input_blocks.1.1.transformer_blocks.0.attn1.to_q"  # an SD1.5 layer (320 x 320)


def good_layer(r=4, out=320, pairs=160):
    g = torch.Generator().manual_seed(3)
    return {"A": torch.randn(out, r, generator=g), "B": torch.randn(r, pairs, generator=g)}


def write_raw(path, tensors, md):
    save_file(tensors, str(path), metadata=md)
    return path


def expect_error(path, *fragments):
    with pytest.raises(lorad_io.LoRaDFileError) as e:
        lorad_io.load_lorad(path)
    msg = str(e.value)
    assert str(path) in msg, msg
    for frag in fragments:
        assert frag in msg, msg
    return msg


# -- round trips -------------------------------------------------------------------------
def test_export_load_round_trip_is_bit_exact_and_keeps_outputs(tmp_path):
    model = student()
    path = export_adapter(model, "student", tmp_path / "s.lorad.safetensors", arch="sd15", target_preset="paper-student",
                          title="tiny", one_step={"timestep": 999, "alpha_bar_T": 0.0047},
                          provenance={"steps": 10, "student_lr": 1e-4, "seed": 0})
    f = lorad_io.load_lorad(path)
    state = adapter_state(model, "student")
    layout = model_layout("sd15", model)
    assert layout is not None and f.layout == layout  # a shrunk UNet records its own ldm numbering
    back = lorad_io.adapter_state_from_layers("sd15", f.layers, layout=f.layout)
    assert set(back) == set(state)  # no key dropped or invented
    for n, t in state.items():
        assert torch.equal(back[n]["A"], t["A"]) and torch.equal(back[n]["B"], t["B"])
    assert f.rank == 4 and f.storage_dtype == "F32" and f.arch == "sd15"
    assert f.one_step.timestep == 999 and f.one_step.alpha_bar_T == 0.0047 and f.one_step.prediction_type == "epsilon"
    md = f.metadata
    assert md["lorad.provenance.steps"] == "10" and md["lorad.provenance.student_lr"] == "0.0001"
    assert md["modelspec.hash_sha256"] == lorad_io.data_sha256(path)
    assert md["lorad.num_layers"] == str(len(state))
    assert all(isinstance(v, str) for v in md.values())

    fresh = tiny_unet()
    loaded = load_adapter(fresh, "student", path)
    assert sorted(loaded) == sorted(state)
    set_active(fresh, "student")
    set_active(model, "student")
    assert torch.equal(unet_out(fresh), unet_out(model))


def test_fp16_storage(tmp_path):
    model = student()
    state = adapter_state(model, "student")
    path = export_adapter(model, "student", tmp_path / "h.lorad.safetensors", arch="sd15",
                          target_preset="paper-student", title="fp16", dtype=torch.float16)
    f = lorad_io.load_lorad(path)
    assert f.storage_dtype == "F16"
    layout = model_layout("sd15", model)
    for key, t in f.layers.items():
        _, name = keymap.to_module_name("sd15", key, layout)
        assert t["A"].dtype == torch.float32
        assert torch.equal(t["A"], state[name]["A"].half().float())
    # Size: 8-byte length + header + 2 bytes per value, nothing else.
    (n,) = struct.unpack("<Q", path.read_bytes()[:8])
    assert path.stat().st_size == 8 + n + 2 * f.num_params


def test_dense_and_mixed_layers(tmp_path):
    layers = {KEY: good_layer(4), KEY.replace("to_q", "to_k"): {"theta": torch.rand(320, 160)},
              KEY.replace("to_q", "to_v"): good_layer(8)}
    md = build_metadata(arch="sd15", rank=None, target_preset="custom", title="mixed")
    f = lorad_io.load_lorad(lorad_io.save_lorad(tmp_path / "m.lorad.safetensors", layers, md, dtype=torch.bfloat16))
    assert f.rank is None and f.metadata["lorad.rank"] == "mixed"
    assert json.loads(f.metadata["lorad.rank_pattern"])[KEY] == 4
    assert torch.equal(f.layers[KEY.replace("to_q", "to_k")]["theta"], layers[KEY.replace("to_q", "to_k")]["theta"]
                       .bfloat16().float())
    assert "3 (unet 3); rank mixed; 1 dense" in describe(f)


def test_transposed_factors_are_rejected_against_the_model(tmp_path):
    model = student()
    path = export_adapter(model, "student", tmp_path / "s.lorad.safetensors", arch="sd15",
                          target_preset="paper-student", title="t")
    f = lorad_io.load_lorad(path)
    key = next(iter(f.layers))
    f.layers[key] = {"A": f.layers[key]["B"].T.contiguous(), "B": f.layers[key]["A"].T.contiguous()}
    shapes = LIO_shapes(model)
    with pytest.raises(lorad_io.LoRaDFileError, match=r"do not fit weight .*expected A \(\d+, r\), B \(r, \d+\)") as e:
        lorad_io.validate_layers(f, shapes)
    assert key in str(e.value) and str(path) in str(e.value)


def LIO_shapes(model):
    from wadi_lorad.lorad.bridge import weight_shapes_of

    return weight_shapes_of("sd15", model, layout=model_layout("sd15", model))


def test_validate_layers_unmatched_and_partial(tmp_path):
    model = student()
    path = export_adapter(model, "student", tmp_path / "s.lorad.safetensors", arch="sd15",
                          target_preset="paper-student", title="t")
    f = lorad_io.load_lorad(path)
    shapes = LIO_shapes(model)
    dropped = sorted(f.layers)[0]
    del shapes[dropped]
    with pytest.raises(lorad_io.LoRaDFileError, match="1 key\\(s\\) match no weight .*nothing applied") as e:
        lorad_io.validate_layers(f, shapes)
    assert dropped in str(e.value)
    matched = lorad_io.validate_layers(f, shapes, allow_partial=True)
    assert set(matched) == set(f.layers) - {dropped}
    # load_adapter is all-or-nothing: a model missing a target gets no adapter at all.
    fresh = tiny_unet()
    del f.layers[dropped]  # now the model has a weight the file lacks: fine, files may be partial
    assert len(load_adapter(fresh, "s", f)) == len(matched)


def test_odd_target_width_is_an_error():
    f = lorad_io.LoRaDFile(None, {KEY: good_layer()}, meta())
    with pytest.raises(lorad_io.LoRaDFileError, match=r"row width 321 \(weight \(320, 321\)\) is odd"):
        lorad_io.validate_layers(f, {KEY: (320, 321)})


def test_a_wholly_wrong_file_lists_the_first_twenty_problems():
    """A file for another model can fail thousands of layers: the message stays readable."""
    keys = [f"{KEY}.{i}" for i in range(30)]
    f = lorad_io.LoRaDFile(None, {k: good_layer() for k in keys}, meta())
    with pytest.raises(lorad_io.LoRaDFileError, match="30 layer\\(s\\) do not fit") as e:
        lorad_io.validate_layers(f, {k: (640, 640) for k in keys})
    msg = str(e.value)
    assert keys[19] in msg and keys[20] not in msg and "... and 10 more" in msg


# -- writer safety ---------------------------------------------------------------------
def md_ok():
    return build_metadata(arch="sd15", rank=4, target_preset="custom", title="x")


def test_no_overwrite_without_force(tmp_path):
    path = tmp_path / "a.lorad.safetensors"
    lorad_io.save_lorad(path, {KEY: good_layer()}, md_ok())
    before = path.read_bytes()
    with pytest.raises(FileExistsError, match="force"):
        lorad_io.save_lorad(path, {KEY: good_layer(2)}, build_metadata(arch="sd15", rank=2, target_preset="c", title="y"))
    assert path.read_bytes() == before
    lorad_io.save_lorad(path, {KEY: good_layer(2)}, build_metadata(arch="sd15", rank=2, target_preset="c", title="y"),
                   force=True)
    assert lorad_io.load_lorad(path).rank == 2


@pytest.mark.parametrize("fail_at", ["write", "replace"])
def test_failed_write_leaves_original_and_no_temp(tmp_path, monkeypatch, fail_at):
    path = tmp_path / "a.lorad.safetensors"
    lorad_io.save_lorad(path, {KEY: good_layer()}, md_ok())
    before = path.read_bytes()

    def half_then_fail(f, chunks):
        f.write(b"".join(bytes(c) for c in chunks)[:100])
        raise OSError("disk full (simulated)")

    if fail_at == "write":
        monkeypatch.setattr(lorad_io, "_write_bytes", half_then_fail)
    else:
        monkeypatch.setattr(lorad_io.os, "replace", lambda *a: (_ for _ in ()).throw(OSError("rename failed")))
    with pytest.raises(OSError, match="simulated|rename failed"):
        lorad_io.save_lorad(path, {KEY: good_layer(2)}, build_metadata(arch="sd15", rank=2, target_preset="c", title="y"),
                       force=True)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]


def test_writer_rejects_bad_input(tmp_path):
    p = tmp_path / "w.lorad.safetensors"
    with pytest.raises(ValueError, match="storage dtype"):
        lorad_io.save_lorad(p, {KEY: good_layer()}, md_ok(), dtype=torch.float64)
    with pytest.raises(lorad_io.LoRaDFileError, match="non-finite"):  # 1e6 overflows float16
        lorad_io.save_lorad(p, {KEY: {"A": torch.full((320, 4), 1e6), "B": torch.ones(4, 160)}}, md_ok(),
                       dtype=torch.float16)
    with pytest.raises(lorad_io.LoRaDFileError, match="metadata says '8'"):
        lorad_io.save_lorad(p, {KEY: good_layer()}, build_metadata(arch="sd15", rank=8, target_preset="c", title="x"))
    with pytest.raises(lorad_io.LoRaDFileError, match="not a layer of sd15"):
        lorad_io.save_lorad(p, {"unet.down_blocks.0.attentions.0.proj_in": good_layer()}, md_ok())
    with pytest.raises(lorad_io.LoRaDFileError, match="strings"):
        lorad_io.save_lorad(p, {KEY: good_layer()}, {**md_ok(), "lorad.provenance.steps": 10})
    assert not p.exists() and list(tmp_path.iterdir()) == []


# -- reader: every validation error names file, key and expectation ------------------------
def test_not_a_safetensors_file(tmp_path):
    p = tmp_path / "junk.lorad.safetensors"
    p.write_bytes(b"\xff" * 64)
    # safetensors' reader validates the header; the error adds the file and what was expected.
    expect_error(p, "not a valid safetensors file", "header too large", "expected a .safetensors file")
    p.write_bytes(struct.pack("<Q", 10) + b"{not json}")
    expect_error(p, "not a valid safetensors file", "invalid JSON")
    p.write_bytes(b"abc")
    expect_error(p, "not a valid safetensors file", "header too small")
    header = b'{"__metadata__": {"lorad.arch": 1}}'
    p.write_bytes(struct.pack("<Q", len(header)) + header)
    expect_error(p, "not a valid safetensors file", "expected a string")
    expect_error(tmp_path / "missing.lorad.safetensors", "no such file")


def test_truncated_data(tmp_path):
    p = write_raw(tmp_path / "t.lorad.safetensors", {KEY + ".lorad_A": good_layer()["A"],
                                                     KEY + ".lorad_B": good_layer()["B"]}, meta())
    p.write_bytes(p.read_bytes()[:-100])
    expect_error(p, "not a valid safetensors file", "not fully covered")  # found before any tensor is read


@pytest.mark.parametrize(
    "md, key, fragment",
    [
        ({"lorad.format_version": None}, "lorad.format_version", "not a LoRaD file"),
        ({"lorad.format_version": "2.0"}, "lorad.format_version", "unsupported format version '2.0'"),
        ({"lorad.format_version": "one"}, "lorad.format_version", "MAJOR.MINOR"),
        ({"lorad.architecture": "sd3"}, "lorad.architecture", "unknown architecture 'sd3'"),
        ({"lorad.pairing": "halves"}, "lorad.pairing", "pairing 'halves' not supported"),
        ({"lorad.rank": "8"}, "lorad.rank", "metadata says '8' but the layers have '4'"),
        ({"lorad.layout": "{oops"}, "lorad.layout", "not valid JSON"),
    ],
)
def test_bad_metadata(tmp_path, md, key, fragment):
    full = {k: v for k, v in {**meta(), **md}.items() if v is not None}
    p = write_raw(tmp_path / "m.lorad.safetensors", {KEY + ".lorad_A": good_layer()["A"],
                                                     KEY + ".lorad_B": good_layer()["B"]}, full)
    expect_error(p, key, fragment, "expected")


@pytest.mark.parametrize(
    "tensors, key, fragment",
    [
        ({KEY + ".lorad_A": torch.zeros(320, 4, dtype=torch.float64)}, KEY + ".lorad_A", "dtype 'F64' not allowed"),
        ({KEY + ".lorad_A": torch.zeros(320, 4, dtype=torch.int32)}, KEY + ".lorad_A", "dtype 'I32'"),
        ({KEY + ".weight": torch.zeros(2, 2)}, KEY + ".weight", "unexpected tensor"),
        ({KEY + ".lorad_A": torch.zeros(320, 4)}, KEY, "incomplete or mixed layer"),
        ({KEY + ".lorad_A": torch.zeros(320, 4), KEY + ".lorad_B": torch.zeros(4, 160),
          KEY + ".lorad_theta": torch.zeros(320, 160)}, KEY, "incomplete or mixed layer"),
        ({KEY + ".lorad_A": torch.zeros(320, 4), KEY + ".lorad_B": torch.zeros(3, 160)}, KEY, "rank mismatch"),
        ({KEY + ".lorad_theta": torch.zeros(320)}, KEY + ".lorad_theta", "a non-empty 2-D tensor"),
        ({"diffusion_model.input_blocks.99.1.proj_in.lorad_theta": torch.zeros(2, 2)},
         "diffusion_model.input_blocks.99.1.proj_in", "not a layer of sd15"),
        ({}, "", "no LoRaD layers"),
    ],
)
def test_bad_tensors(tmp_path, tensors, key, fragment):
    p = write_raw(tmp_path / "t.lorad.safetensors", tensors, meta(rank="dense" if "theta" in str(tensors) else "4"))
    expect_error(p, key, fragment, "expected")


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_values(tmp_path, bad):
    a = good_layer()["A"]
    a[3, 1] = bad
    p = write_raw(tmp_path / "n.lorad.safetensors", {KEY + ".lorad_A": a, KEY + ".lorad_B": good_layer()["B"]}, meta())
    expect_error(p, KEY + ".lorad_A", "1 non-finite values", "expected finite values")


def test_hash_mismatch_is_detected(tmp_path):
    p = lorad_io.save_lorad(tmp_path / "h.lorad.safetensors", {KEY: good_layer()}, md_ok())
    raw = bytearray(p.read_bytes())
    raw[-5] ^= 0x01  # flip one bit of tensor data
    p.write_bytes(bytes(raw))
    expect_error(p, "modelspec.hash_sha256", "does not match", "corrupted")
    assert lorad_io.load_lorad(p, verify_hash=False).layers[KEY]["B"].shape == (4, 160)


def test_one_header_reader_lists_tensors_in_data_order(tmp_path):
    """read_header's table is in the data section's order (what tensors_sha256 hashes), not by name:
    with safetensors' offset_keys and, for safetensors < 0.6, from the validated header's offsets."""
    layer = good_layer()
    # Mixed dtypes: safetensors stores the F32 B before the F16 A, against name order.
    p = write_raw(tmp_path / "o.lorad.safetensors",
                  {KEY + ".lorad_A": layer["A"].half(), KEY + ".lorad_B": layer["B"]}, md_ok())
    raw = p.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    table = {k: v for k, v in json.loads(raw[8:8 + n]).items() if k != "__metadata__"}
    by_offset = sorted(table, key=lambda k: table[k]["data_offsets"][0])  # independent: the JSON itself
    assert by_offset != sorted(table)  # the case where name order would hash the wrong bytes
    header = lorad_io.read_header(p)
    assert list(header.tensors) == by_offset and header.metadata == md_ok()
    assert header.tensors == {k: (v["dtype"], v["shape"]) for k, v in table.items()}

    class OldSafeOpen:  # safe_open of safetensors < 0.6: no offset_keys
        pass

    assert lorad_io._offset_order(p, OldSafeOpen(), sorted(table)) == by_offset
    f = lorad_io.load_lorad(p, dtype=None)
    tensors = {KEY + lorad_io.SUFFIXES[part]: t for part, t in f.layers[KEY].items()}
    assert lorad_io.tensors_sha256(tensors, header) == lorad_io.data_sha256(p)


def test_metadata_keys():
    md = build_metadata(arch="sd21-base", rank=256, target_preset="paper-student", title="WaDi SD2.1",
                        one_step={"timestep": 999, "alpha_bar_T": 0.0047}, provenance={"teacher_cfg": 1.5},
                        description="one-step", author="me", steps_note="x")
    assert md["modelspec.architecture"] == "stable-diffusion-v2-512/lorad"
    assert md["modelspec.sai_model_spec"] == "1.0.1" and md["modelspec.title"] == "WaDi SD2.1"
    assert md["modelspec.resolution"] == "512x512" and md["modelspec.prediction_type"] == "epsilon"
    assert md["modelspec.timestep_range"] == "999,999" and md["wadi.alpha_bar_T"] == "0.0047"
    assert md["ss_network_module"] == "lorad" and md["ss_network_dim"] == "256"
    assert md["lorad.provenance.teacher_cfg"] == "1.5" and md["modelspec.author"] == "me"
    assert md["lorad.steps_note"] == "x" and md["lorad.pairing"] == "adjacent"
    with pytest.raises(ValueError, match="alpha_bar_T must be in"):
        build_metadata(arch="sd15", rank=4, target_preset="c", title="t", one_step={"timestep": 999, "alpha_bar_T": 2})
    with pytest.raises(ValueError, match="prediction_type"):
        build_metadata(arch="sd15", rank=4, target_preset="c", title="t",
                       one_step={"timestep": 999, "alpha_bar_T": 0.1, "prediction_type": "x"})
    with pytest.raises(ValueError, match="title"):
        build_metadata(arch="sd15", rank=4, target_preset="c", title="")


def test_meta_shapes_map_to_file_layers_and_back():
    """Full-size SD1.5 student: adapter state -> file layers -> adapter state, names and shapes intact."""
    from wadi_lorad.lorad.archs import build_meta

    model = build_meta("sd15")
    inject(model, "student", "paper-student", rank=256)
    state = adapter_state(model, "student")
    layers = lorad_io.layers_from_adapter_state("sd15", state)
    assert all(k.startswith("diffusion_model.") for k in layers) and len(layers) == len(state) == 182
    back = lorad_io.adapter_state_from_layers("sd15", layers)
    assert {n: {k: v.shape for k, v in t.items()} for n, t in back.items()} == \
           {n: {k: v.shape for k, v in t.items()} for n, t in state.items()}


def test_strength_scales_the_wrapped_angle_in_both_forms():
    """Spec: effective angle = s * wrap(A @ B) or s * wrap(theta); differs from s * theta when |theta| > pi."""
    import math

    from wadi_lorad.lorad.layer import LoRaDLayer

    lin = torch.nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[1.0, 2.0]]))
    layer = LoRaDLayer(lin, "l")
    dense, fact = layer.add_adapter("d", None, dense=True), layer.add_adapter("f", 1)
    with torch.no_grad():
        dense.theta.fill_(4.0)
        fact.A.fill_(2.0)
        fact.B.fill_(2.0)
    dense.strength = fact.strength = 0.5
    t = 0.5 * (4.0 - 2 * math.pi)  # wrap(4) = 4 - 2pi
    want = torch.tensor([[math.cos(t) * 1 - math.sin(t) * 2, math.sin(t) * 1 + math.cos(t) * 2]])
    for name in ("d", "f"):
        assert torch.allclose(layer.rotated_weight([name]), want, atol=1e-6), name


def test_unet_and_text_encoder_in_one_file(tmp_path):
    import transformers
    from wadi_lorad.lorad.presets import Targets

    def tiny_clip():
        torch.manual_seed(0)
        cfg = transformers.CLIPTextConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                          num_attention_heads=4, vocab_size=100, max_position_embeddings=8)
        return transformers.CLIPTextModel(cfg).eval()

    te_targets = Targets(include=(r"self_attn\.(q|k|v|out)_proj$", r"mlp\.fc\d$"))
    unet, te = student(), tiny_clip()
    inject(te, "student", te_targets, rank=2)
    with torch.no_grad():
        for t in adapter_state(te, "student").values():
            t["A"].normal_(0, 0.3)
    path = export_adapter({"unet": unet, "text_encoder": te}, "student", tmp_path / "both.lorad.safetensors",
                          arch="sd15", target_preset="custom", title="both")
    f = lorad_io.load_lorad(path)
    assert f.components() == {"unet": len(adapter_state(unet, "student")), "text_encoder": 12}
    assert "text_encoders.clip_l.transformer.text_model.encoder.layers.1.mlp.fc2" in f.layers
    fresh_te = tiny_clip()
    names = load_adapter(fresh_te, "student", f, component="text_encoder")
    assert sorted(names) == sorted(adapter_state(te, "student"))
    for n in names:
        assert torch.equal(fresh_te.get_submodule(n).rotated_weight(["student"]),
                           te.get_submodule(n).rotated_weight(["student"]))
    with pytest.raises(keymap.KeyMapError, match="no LoRaD key spelling for component 'text_encoder_2'"):
        load_adapter(tiny_clip(), "x", f, component="text_encoder_2")
    unet_only = export_adapter(unet, "student", tmp_path / "u.lorad.safetensors", arch="sd15",
                               target_preset="custom", title="u")
    with pytest.raises(lorad_io.LoRaDFileError, match="no layers for component 'text_encoder'.*text_encoders.clip_l"):
        load_adapter(tiny_clip(), "x", unet_only, component="text_encoder")
