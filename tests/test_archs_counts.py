"""Full-size architectures from the repo's configs (meta device) and the paper's trainable-parameter counts."""

from __future__ import annotations

import pytest
from wadi_lorad.lorad import functional
from wadi_lorad.lorad.archs import ARCHS, UnknownArchError, build_meta, get_arch, load_config
from wadi_lorad.lorad.inject import count_parameters, inject, lorad_layers


@pytest.mark.parametrize(
    "arch, component, params",
    [
        # Public parameter counts of the released models: a check that the stored configs are the real ones.
        ("sd15", "unet", 859_520_964),
        ("sd21", "unet", 865_910_724),
        ("sdxl", "unet", 2_567_463_684),
        ("sd15", "text_encoder", 123_060_480),
        ("sd21", "text_encoder", 340_387_840),
        ("sdxl", "text_encoder_2", 694_659_840),
    ],
)
def test_meta_builds_match_released_models(arch, component, params):
    model = build_meta(arch, component)
    assert all(p.device.type == "meta" for p in model.parameters())
    assert sum(p.numel() for p in model.parameters()) == params


@pytest.mark.parametrize(
    "arch, preset, rank, layers, exact, paper",
    [
        ("sd15", "paper-student", 256, 182, 83_795_968, "83.80"),
        ("sd21", "paper-student", 256, 214, 94_429_184, "94.43"),
        ("sd21-base", "paper-student", 256, 214, 94_429_184, "94.43"),
        ("pixart-alpha", "paper-student", 128, 283, 81_219_584, "81.22"),
        ("pixart-alpha-512", "paper-student", 128, 283, 81_219_584, "81.22"),
        ("sd15", "paper-fake", 32, 160, 9_378_816, "9.38"),
    ],
)
def test_paper_trainable_parameter_counts(arch, preset, rank, layers, exact, paper):
    model = build_meta(arch)
    names = inject(model, "student", preset, rank=rank)
    assert len(names) == len(set(names)) == layers
    n = count_parameters(model, "student")
    # Independent formula: r * (out + in/2) summed over the adapted Linear layers.
    formula = sum(functional.factor_params(layer.weight.shape[0], layer.weight.shape[1] // 2, rank)
                  for _, layer in lorad_layers(model))
    assert n == formula == exact
    assert f"{n / 1e6:.2f}" == paper


def test_official_pixart_every_linear_is_82_56m():
    model = build_meta("pixart-alpha")
    inject(model, "student", "all-linear", rank=128)
    assert f"{count_parameters(model, 'student') / 1e6:.2f}" == "82.56"


def test_arch_lookup_by_id_and_modelspec():
    assert get_arch("stable-diffusion-v1/lorad").id == "sd15"
    assert get_arch("stable-diffusion-v2-512").id == "sd21-base"
    assert get_arch("stable-diffusion-v2-768-v/lorad").id == "sd21"
    assert get_arch("stable-diffusion-xl-v1-base/lorad").id == "sdxl"
    assert get_arch("pixart-alpha/lorad").id == "pixart-alpha"
    assert {a.modelspec_adapter for a in ARCHS.values()} >= {"stable-diffusion-v1/lorad", "pixart-alpha/lorad"}
    with pytest.raises(UnknownArchError, match="sd3"):
        get_arch("sd3")
    with pytest.raises(KeyError, match="no component 'vae'"):
        load_config("sd15", "vae")


def test_sd21_base_differs_only_in_sample_size():
    a, b = load_config("sd21"), load_config("sd21-base")
    assert a["sample_size"] == 96 and b["sample_size"] == 64
    assert {k: v for k, v in a.items() if k != "sample_size"} == {k: v for k, v in b.items() if k != "sample_size"}
