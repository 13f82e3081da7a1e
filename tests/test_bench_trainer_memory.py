"""bench/trainer_memory.py: one real memory child at toy size, and the GPU-fit extrapolation's arithmetic."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"


@pytest.fixture(scope="module")
def tm(bench_import):
    return bench_import("trainer_memory")


def test_case_keys_round_trip(tm):
    c = tm.Case("sd15", "official-shared", "bf16", True, 2, 64)
    assert c.key == "sd15:official-shared:bf16:ckpt:b2:l64"
    assert tm.Case.parse(c.key) == c


def _row(total, weights, act):
    rest = total - weights - act
    return {"total_mib": total, "breakdown_mib": {"weights": weights, "adapters": rest / 4, "optimizer": rest / 2,
                                                  "grads": rest / 4, "activations": act}}


def test_fit_table_is_fixed_plus_batch_times_per_sample(tm):
    gib = 1024
    res = {
        # fixed 5 GiB, activations 2 GiB, no batch-2 run: per sample = batch 1's activations.
        "m:ours:fp32:nockpt:b1:l64": _row(7 * gib, 3 * gib, 2 * gib),
        # batch 2 measured: per sample = peak(2) - peak(1) = 3 GiB, fixed = 8 - 3 = 5 GiB.
        "m:ours:bf16:nockpt:b1:l64": _row(8 * gib, 2 * gib, 2.5 * gib),
        "m:ours:bf16:nockpt:b2:l64": _row(11 * gib, 2 * gib, 5.5 * gib),
        # shared copies: +2 x 1 GiB of weights counted into the fixed part (fixed 3 + 2 = 5, per 1).
        "m:official-shared:bf16:ckpt:b1:l64": _row(4 * gib, 1 * gib, 1 * gib),
    }
    lines = {tuple(c.strip() for c in line.split("|")[1:5]): line.split("|")[5:-1]
             for line in tm.fit_table(res).splitlines()[2:]}

    def batches(key):
        return [c.strip() for c in lines[key][2:]]

    # largest b with fixed + b * per + 1 GiB CUDA overhead <= G, for G = 12, 16, 24, 48, 80 (by hand)
    assert batches(("m", "ours", "fp32", "off")) == ["3", "5", "9", "21", "37"]
    assert batches(("m", "ours", "bf16", "off")) == ["2", "3", "6", "14", "24"]
    assert lines[("m", "ours", "bf16", "off")][1].strip() == "3.00 (measured)"
    assert batches(("m", "official (shared, +2 copies counted)", "bf16", "on")) == ["6", "10", "18", "42", "74"]
    assert lines[("m", "official (shared, +2 copies counted)", "bf16", "on")][0].strip() == "7.00"
    assert tm.slope_ratio(res) == {"m:ours:bf16:nockpt:b2:l64": pytest.approx(3 / 2.5)}


def test_one_memory_child_at_toy_size_reports_a_consistent_breakdown(tm, tmp_path):
    out = tmp_path / "tm.json"
    cmd = [sys.executable, str(BENCH / "trainer_memory.py"), "--cases", "sd15-toy:ours:fp32:nockpt:b1:l8",
           "--threads", "1", "--json", str(out)]  # the paper ranks: the optimizer state is ~75 MiB
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**__import__("os").environ,
                                                                      "WADI_BENCH_CACHE": str(tmp_path)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    r = json.loads(out.read_text())["results"]["sd15-toy:ours:fp32:nockpt:b1:l8"]
    b = r["breakdown_mib"]
    assert sum(b.values()) == pytest.approx(r["total_mib"])
    assert b["activations"] > 0 and r["copies"] == 1
    # The resident-set marks see the tensors the model holds: at least the counted bytes of the frozen
    # weights, and AdamW's two moments (the trainable count x 8 bytes) within allocator slack.
    assert b["weights"] >= 0.95 * r["counted_mib"]["weights"]
    assert b["optimizer"] == pytest.approx(r["counted_mib"]["optimizer"], rel=0.25, abs=2.0)
    assert r["trainable_params"] * 4 / 2**20 == pytest.approx(b["grads"])


def test_report_of_the_committed_json():
    """The documented ``--report`` command, as written, from the checkout: one table row per measured case."""
    root = BENCH.parent
    proc = subprocess.run([sys.executable, "bench/trainer_memory.py", "--report", "docs/perf/trainer_memory_cpu.json"],
                          cwd=root, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = json.loads((root / "docs/perf/trainer_memory_cpu.json").read_text())["results"]
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| sd15 |")]
    measured = [k for k, r in results.items() if "total_mib" in r]
    # every case once in the measured table; every batch-1 case again in the GPU-fit table
    assert len(rows) == len(results) + sum(":b1:" in k for k in measured)


def test_ours_step_runs_on_an_sdxl_shaped_unet(tm):
    """SDXL's UNet needs the pooled text vector and size ids: the bench step gives them (toy widths)."""
    import argparse

    import torch
    import vsd_step
    from diffusers import UNet2DConditionModel

    cfg = tm.models.unet_config("sdxl")
    cfg.update(block_out_channels=[32, 64, 64], transformer_layers_per_block=[1, 1, 1], attention_head_dim=[2, 4, 4],
               cross_attention_dim=64, projection_class_embeddings_input_dim=6 * 256 + 32, sample_size=8)
    torch.manual_seed(0)
    unet = UNet2DConditionModel(**cfg).requires_grad_(False).eval()
    args = argparse.Namespace(model="x", batch=2, latent=8, device="cpu", student_rank=4, fake_rank=2, guidance=1.5,
                              autocast=None, gradient_checkpointing=False)
    d, cond, null = vsd_step.inputs(args, unet)
    ours = vsd_step.Ours(unet, args)
    assert ours.bb.kind == "sdxl" and tuple(ours.pooled.shape) == (1, 32)  # 1568 - 6 x 256 time-id features
    before = {k: p.detach().clone() for k, p in ours.views.student.params.items()}
    ours.step(d, cond, null)
    assert any(not torch.equal(before[k], p) for k, p in ours.views.student.params.items())
