"""The trainers' Accelerator: processes, devices and collectives from accelerate; autocast from the run.

accelerate keeps ``mixed_precision`` in a process-wide singleton that refuses a second value
("AcceleratorState has already been initialized"), so two runs with different precisions in one
process (tests, a notebook, a bench script) would need its private ``_reset_state``.  The trainers
use accelerate for processes, devices and ``reduce`` only: they never call ``prepare()`` (one base
runs under three adapter views per step, so gradients are reduced explicitly, :mod:`.optim`) and keep
one loss scaler per trained part (:func:`.optim.make_scaler`).  The precision is therefore needed for
``autocast()`` alone, which this subclass takes from the run's config through ``torch.autocast``
and the public Accelerator API, leaving the singleton's precision unset.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch
from accelerate import Accelerator

AUTOCAST_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


class RunAccelerator(Accelerator):
    """An Accelerator whose ``autocast()`` and ``native_amp`` follow ``mixed_precision`` of this run."""

    def __init__(self, mixed_precision: str, **kwargs) -> None:
        super().__init__(**kwargs)
        if mixed_precision not in ("no", *AUTOCAST_DTYPES):
            raise ValueError(f"train.mixed_precision: expected 'no', 'fp16' or 'bf16', got {mixed_precision!r}")
        self.run_precision = mixed_precision
        dtype = AUTOCAST_DTYPES.get(mixed_precision)
        # As accelerate decides: fp16 autocast off the CPU only, bf16 on the CPU too.
        self.native_amp = dtype is not None and torch.amp.is_autocast_available(self.device.type) and (
            mixed_precision == "bf16" or self.device.type != "cpu")
        self._autocast_dtype = dtype

    @contextlib.contextmanager
    def autocast(self, autocast_handler=None) -> Iterator[None]:  # noqa: ARG002 - the base's signature
        if not self.native_amp:
            yield
            return
        with torch.autocast(device_type=self.device.type, dtype=self._autocast_dtype):
            yield


def make_accelerator(mixed_precision: str) -> RunAccelerator:
    """The Accelerator of one run (any number of runs, of any precisions, may share a process)."""
    # accelerate runs several CPU processes (gloo) only when told it is on CPU; without a GPU a
    # multi-process launch (torchrun / accelerate launch) means exactly that.
    multi = int(os.environ.get("WORLD_SIZE", "1")) > 1
    return RunAccelerator(mixed_precision, cpu=multi and not torch.cuda.is_available())
