"""The EMAs (diffusers' EMAModel behind each checkpoint's state format) against scalar loops of their formulas."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from wadi_lorad.trainer.ema import EMA


def _params(seed: int = 0) -> dict[str, nn.Parameter]:
    g = torch.Generator().manual_seed(seed)
    return {"a": nn.Parameter(torch.randn(3, 2, generator=g)), "b": nn.Parameter(torch.randn(4, generator=g))}


def _reference(history: list[dict[str, torch.Tensor]], decay: float) -> dict[str, list[float]]:
    """Element by element in Python floats: the first update copies, then d_k = min(decay, (1+k)/(10+k))."""
    shadow = {k: [float(x) for x in v.flatten()] for k, v in history[0].items()}
    for n, weights in enumerate(history[1:], start=1):
        d = 0.0 if n == 1 else min(decay, n / (9 + n))  # k = n - 1 updates after the first
        for k, v in weights.items():
            shadow[k] = [d * s + (1 - d) * float(p) for s, p in zip(shadow[k], v.flatten())]
    return shadow


def _train(params, ema, steps, seed=1):
    g = torch.Generator().manual_seed(seed)
    history = []
    for _ in range(steps):
        with torch.no_grad():
            for p in params.values():
                p.add_(torch.randn(p.shape, generator=g))
        ema.update()
        history.append({k: p.detach().clone() for k, p in params.items()})
    return history


def test_average_matches_the_formula():
    params = _params()
    init = {k: p.detach().clone() for k, p in params.items()}
    ema = EMA(params, decay=0.9)
    history = _train(params, ema, 30)
    ref = _reference([init, *history], 0.9)
    assert ema.updates == 30
    for k, s in ema.shadow.items():
        assert s.dtype == torch.float32
        torch.testing.assert_close(s.flatten(), torch.tensor(ref[k], dtype=torch.float32), rtol=1e-5, atol=1e-5)


def test_applied_swaps_in_and_restores():
    params = _params()
    ema = EMA(params, decay=0.5)
    _train(params, ema, 3)
    live = {k: p.detach().clone() for k, p in params.items()}
    with ema.applied():
        assert all(torch.equal(params[k], ema.shadow[k]) for k in params)
    assert all(torch.equal(params[k], live[k]) for k in params)


def test_state_round_trip_continues_identically_and_reads_the_old_format():
    params, twin = _params(), _params()
    ema = EMA(params, decay=0.95)
    _train(params, ema, 5)
    sd = ema.state_dict()
    assert set(sd) == {"shadow.a", "shadow.b", "updates"}  # ema.safetensors of every run checkpoint
    # A checkpoint written by the earlier home-grown EMA has exactly these keys: load it into a fresh one.
    other = EMA(twin, decay=0.95)
    other.load_state_dict({k: v.clone() for k, v in sd.items()})
    with torch.no_grad():
        for k in params:
            twin[k].copy_(params[k])
    _train(params, ema, 4, seed=7)
    _train(twin, other, 4, seed=7)
    assert other.updates == ema.updates == 9
    assert all(torch.equal(ema.shadow[k], other.shadow[k]) for k in params)
    with pytest.raises(KeyError, match="shadow.b"):
        EMA(_params(), 0.9).load_state_dict({"shadow.a": sd["shadow.a"], "updates": sd["updates"]})


def test_tiny_world_stage_ema_keeps_its_schedule_and_state_format():
    """The pretraining stages' EMA: decay min(decay, (1+n)/(10+n)) at the n-th update, from n = 1."""
    from wadi_lorad.trainer.tinyworld.loop import EMA as StageEMA

    params = _params(3)
    init = [p.detach().clone() for p in params.values()]
    ema = StageEMA(params.values(), decay=0.95)
    g = torch.Generator().manual_seed(4)
    shadow = [[float(x) for x in t.flatten()] for t in init]
    for n in range(1, 41):
        with torch.no_grad():
            for p in params.values():
                p.add_(torch.randn(p.shape, generator=g))
        ema.update()
        d = min(0.95, (1 + n) / (10 + n))
        shadow = [[d * s + (1 - d) * float(x) for s, x in zip(sh, p.detach().flatten())]
                  for sh, p in zip(shadow, params.values())]
    for got, ref in zip(ema.shadow, shadow):
        torch.testing.assert_close(got.flatten(), torch.tensor(ref, dtype=torch.float32), rtol=1e-5, atol=1e-5)
    state = ema.state_dict()
    assert set(state) == {"shadow", "updates", "decay"} and state["updates"] == 40
    other = StageEMA(_params(5).values(), decay=0.95)
    other.load_state_dict(state)
    assert other.updates == 40 and all(torch.equal(a, b) for a, b in zip(other.shadow, ema.shadow))
    target = _params(6)
    other.copy_to(target.values())
    assert all(torch.equal(t, s) for t, s in zip(target.values(), ema.shadow))
