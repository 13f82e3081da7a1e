"""lorad.layer_spec.LayerSpec: what one stored layer means, and its errors (each names the key)."""

from __future__ import annotations

import math

import pytest
import torch
from wadi_lorad.lorad.layer_spec import LayerSpec, LayerSpecError

KEY = "diffusion_model.input_blocks.1.1.transformer_blocks.0.attn1.to_q"


@pytest.mark.parametrize(("parts", "match"), [
    ({"A": torch.zeros(4, 2)}, "lorad_A without lorad_B"),
    ({"B": torch.zeros(2, 3)}, "lorad_B without lorad_A"),
    ({"A": torch.zeros(4, 2), "B": torch.zeros(2, 3), "theta": torch.zeros(4, 3)}, "exactly"),
    ({"A": torch.zeros(4, 2), "B": torch.zeros(3, 3)}, "disagree on the rank"),
    ({"A": torch.zeros(4, 2, dtype=torch.int32), "B": torch.zeros(2, 3)}, "not a float dtype"),
    ({"theta": torch.zeros(12)}, "not 2-D"),
    ({"A": torch.zeros(4, 0), "B": torch.zeros(0, 3)}, "rank >= 1"),
])
def test_malformed_layers_are_refused_naming_the_key(parts, match):
    with pytest.raises(LayerSpecError, match=match) as e:
        LayerSpec.from_parts(parts, KEY)
    assert KEY in str(e.value)


def test_fit_to_a_weight():
    spec = LayerSpec.from_parts({"A": torch.zeros(8, 2), "B": torch.zeros(2, 6)}, KEY)
    spec.check_fit((8, 12))
    spec.check_fit((8, 3, 2, 2))  # Conv2d rows flatten to 12
    with pytest.raises(LayerSpecError, match=r"expected A \(9, r\), B \(r, 6\)"):
        spec.check_fit((9, 12))
    with pytest.raises(LayerSpecError, match="row width 13 .* is odd"):
        spec.check_fit((8, 13))
    with pytest.raises(LayerSpecError, match="not a float dtype"):
        spec.check_fit((8, 12), torch.int64)


def test_angles_are_strength_times_wrapped_theta_in_both_forms():
    raw = torch.tensor([[4.0, -3.5, 0.25]])  # two entries beyond pi
    dense = LayerSpec.from_parts({"theta": raw}, KEY)
    fact = LayerSpec.from_parts({"A": torch.tensor([[2.0]]), "B": raw / 2}, KEY)
    want = [0.5 * (((x + math.pi) % (2 * math.pi)) - math.pi) for x in raw[0].tolist()]
    for spec in (dense, fact):
        assert spec.angles(0.5)[0].tolist() == pytest.approx(want, abs=1e-6)
    w = torch.randn(1, 6)
    assert torch.equal(dense.rotated(w, 0.0), w) and dense.rotated(w, 0.0) is not w
    back = dense.rotated(dense.rotated(w, 0.5), -0.5)
    assert torch.allclose(back, w, atol=1e-6)
    assert dense.rank is None and fact.rank == 1 and (dense.out, dense.pairs) == (1, 3)
