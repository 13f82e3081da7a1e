"""Runs of different precisions in one process (tests, notebooks) without accelerate's private reset."""

from __future__ import annotations

import pytest
import torch
from wadi_lorad.trainer.accel import make_accelerator


def test_each_run_autocasts_in_its_own_precision():
    x = torch.randn(8, 8)
    plain, bf16, fp16, again = (make_accelerator(p) for p in ("no", "bf16", "fp16", "no"))
    with bf16.autocast():
        assert (x @ x).dtype == torch.bfloat16
    for acc in (plain, again):
        assert not acc.native_amp
        with acc.autocast():
            assert (x @ x).dtype == torch.float32
    # fp16 autocast is a GPU feature (accelerate decides the same): on a CPU the run computes in fp32.
    assert fp16.native_amp == (fp16.device.type != "cpu")
    if fp16.device.type == "cpu":
        with fp16.autocast():
            assert (x @ x).dtype == torch.float32
    with bf16.autocast():  # the later accelerators did not change the earlier one
        assert (x @ x).dtype == torch.bfloat16


def test_unknown_precision_is_refused():
    with pytest.raises(ValueError, match="mixed_precision.*'fp8'"):
        make_accelerator("fp8")
