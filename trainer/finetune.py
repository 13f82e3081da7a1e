"""The life cycle shared by the image fine-tunes (``wadi personalize``, ``wadi relation``).

:class:`FineTune` checks every input before a model loads (config, base folder, the
subclass's own inputs, output folder, resume checkpoint), then runs the loop the trainer
tab expects: one optimizer over the subclass's trainable tensors, gradient accumulation,
clipping, EMA, ``events.jsonl``, tqdm, sample grids, atomic checkpoints that resume
exactly (:mod:`.checkpoint`), and the stop-file contract of :mod:`.jobs` (checked every
step and between the long set-up phases: the run saves a checkpoint, logs ``stopped`` and
returns).  A subclass supplies ``check_inputs``, ``build`` (models and data, returning the
trainable parameters), ``draw`` (a step's random numbers), ``loss``, ``sample`` and ``export``.

These runs use one process (a DreamBooth-size job does not need more); a multi-process
launch is refused with a clear message rather than run N copies into one folder.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from . import checkpoint
from .backbones import REQUIRED, inspect_folder
from .config import ConfigError, config_hash, save_yaml
from .ema import EMA
from .events import EventLog, due, write_step
from .fingerprint import base_fingerprint, file_fingerprint
from .jobs import RunStopped, end_stopped, stop_requested

__all__ = ["FineTune", "RunStopped"]


class FineTune:
    main = True  # one process: it writes the events and checkpoints (the contract of jobs.end_stopped)
    command = "finetune"  # tqdm label and the output's default name

    def __init__(self, cfg: Any, validate: Callable[[Any], None], loader: Callable[[dict], Any],
                 not_hashed: set[str], log=print, progress: bool = True, extra_files: tuple[str, ...] = ()) -> None:
        """``extra_files`` (e.g. a student .lorad) enter the fingerprint that guards resuming."""
        validate(cfg)
        self.cfg, self.log, self.progress = cfg, log, progress
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise ConfigError(f"wadi {self.command} runs in one process; start it without torchrun/accelerate "
                              "launch (in the trainer tab: choose one device)")
        self.kind, _ = inspect_folder(cfg.model.base, cfg.model.backbone)
        for f in extra_files:
            if f and not Path(f).is_file():
                raise ConfigError(f"{f} does not exist (expected a file)")
        self.check_inputs()
        self.out = Path(cfg.output.dir)
        from .accel import make_accelerator

        self.acc = make_accelerator(cfg.train.mixed_precision)
        self.device = self.acc.device
        self.cfg_hash = config_hash(cfg, not_hashed)
        fp = base_fingerprint(cfg.model.base, REQUIRED[self.kind])
        self.base_fp = fp if not any(extra_files) else fp + "+" + "+".join(
            file_fingerprint(Path(f))[:12] for f in extra_files if f)
        self.batch = cfg.train.batch_size * cfg.train.grad_accum
        self.resume_from = checkpoint.find_resume(cfg.resume, self.out)
        if self.resume_from is not None:
            checkpoint.check_compatible(self.resume_from, self.cfg_hash, cfg, self.base_fp, self.batch, loader, not_hashed)
        elif cfg.resume == "latest":
            self.log(f"note: no checkpoint in {checkpoint.checkpoint_root(self.out)} yet; starting from step 0")
        checkpoint.prepare_output(self.out, self.resume_from, cfg.resume, cfg.output.force)
        self.step = 0
        self._ready = False
        self.train_time_s = 0.0

    # -- the subclass's part ------------------------------------------------------------------
    def check_inputs(self) -> None:
        """Read and check the data (no model loaded yet); raise a clear error on bad input."""

    def build(self) -> dict[str, nn.Parameter]:
        """Load models and data; return the trainable parameters by name."""
        raise NotImplementedError

    def draw(self, gen: torch.Generator, n: int) -> Any:
        """All random numbers of one optimizer step (``n`` samples) from ``gen``."""
        raise NotImplementedError

    def micro_batch(self, draw: Any, i: int, size: int) -> Any:
        """Micro-batch ``i`` of a step's draw (default: a dict of tensors sliced along dim 0)."""
        return {k: v[i * size: (i + 1) * size] for k, v in draw.items()}

    def loss(self, batch: Any) -> tuple[Tensor, dict[str, float]]:
        raise NotImplementedError

    def sample(self, path: Path) -> Path:
        raise NotImplementedError

    def export(self) -> dict[str, Path]:
        raise NotImplementedError

    def start_fields(self) -> dict[str, Any]:
        return {}

    # -- shared ---------------------------------------------------------------------------------
    def check_stop(self) -> None:
        if stop_requested(self.out):
            raise RunStopped

    def _dtype(self) -> str:
        c = self.cfg
        if c.model.dtype != "auto":
            return c.model.dtype
        if self.device.type == "cuda" and c.train.mixed_precision in ("fp16", "bf16"):
            return c.train.mixed_precision
        return "fp32"

    def setup(self) -> None:
        from .optim import make_lr_schedule, make_optimizer, make_scaler

        c = self.cfg
        self.check_stop()
        self.params = self.build()
        self.check_stop()
        plist = list(self.params.values())
        self.opt = make_optimizer(plist, c.optim.lr, c.optim, self.device, self.log)
        self.sched = make_lr_schedule(self.opt, c.optim, c.train.max_steps)
        amp = c.train.mixed_precision == "fp16" and self.acc.native_amp
        self.scaler = make_scaler("fp16", self.device) if amp else None
        self.ema = EMA(self.params, c.train.ema_decay) if c.train.ema_decay > 0 else None
        self.gen = torch.Generator().manual_seed(c.train.seed)
        if self.resume_from is not None:
            self._restore(checkpoint.load_checkpoint(self.resume_from))
        self.events = EventLog(self.out / "events.jsonl", tensorboard_dir=self.out / "tensorboard"
                               if c.output.tensorboard else None, log=self.log)
        self._ready = True

    def _restore(self, snap: checkpoint.Snapshot) -> None:
        names = sorted(self.params)
        if sorted(snap.student) != names:
            raise checkpoint.ResumeError(f"resume: {self.resume_from} holds {sorted(snap.student)[:3]}..., "
                                 f"this run trains {names[:3]}...")
        with torch.no_grad():
            for k, p in self.params.items():
                p.copy_(snap.student[k])
        st = snap.trainer_state
        self.opt.load_state_dict(st["opt"])
        self.sched.load_state_dict(st["sched"])
        self.gen.set_state(st["data_generator"])
        torch.set_rng_state(st["torch_rng"])
        if self.scaler is not None and "scaler" in st:
            self.scaler.load_state_dict(st["scaler"])
        checkpoint.finish_restore(self, snap)

    def save_checkpoint(self) -> Path | None:
        st = {"opt": self.opt.state_dict(), "sched": self.sched.state_dict(),
              "data_generator": self.gen.get_state(), "torch_rng": torch.get_rng_state()}
        if self.scaler is not None:
            st["scaler"] = self.scaler.state_dict()
        snap = checkpoint.Snapshot(self.step, {k: p.detach().clone() for k, p in self.params.items()}, None,
                           self.ema.state_dict() if self.ema is not None else None, st,
                           {"config_hash": self.cfg_hash, "base_fingerprint": self.base_fp,
                            "global_batch": self.batch, "command": self.command})
        try:
            path = checkpoint.save_checkpoint(checkpoint.checkpoint_root(self.out), snap, self.cfg, self.cfg.output.keep_checkpoints)
        except OSError as e:  # a full disk must not end the run: the previous checkpoint is intact
            self.log(f"warning: checkpoint at step {self.step} failed ({e}); previous checkpoints are intact")
            self.events.write("error", step=self.step, message=f"checkpoint failed: {e}")
            return None
        self.events.write("checkpoint", step=self.step, path=str(path))
        return path

    def train_step(self) -> dict[str, float]:
        c = self.cfg
        accum, size = c.train.grad_accum, c.train.batch_size
        draw = self.draw(self.gen, size * accum)
        total, parts_sum = 0.0, {}
        for i in range(accum):
            with self.acc.autocast():
                loss, parts = self.loss(self.micro_batch(draw, i, size))
            scaled = loss / accum
            (self.scaler.scale(scaled) if self.scaler is not None else scaled).backward()
            total += float(loss.detach()) / accum
            for k, v in parts.items():
                parts_sum[k] = parts_sum.get(k, 0.0) + v / accum
        from .optim import clip_and_norm

        plist = list(self.params.values())
        if self.scaler is not None:
            self.scaler.unscale_(self.opt)
        norm = clip_and_norm(plist, c.optim.grad_clip)
        if self.scaler is not None:
            self.scaler.step(self.opt)
            self.scaler.update()
        else:
            self.opt.step()
        self.sched.step()
        self.opt.zero_grad(set_to_none=True)
        self.after_step()
        if self.ema is not None:
            self.ema.update()
        self.step += 1
        return {"loss": total, **{f"loss_{k}": v for k, v in parts_sum.items()}, "grad_norm": norm,
                "lr": self.sched.get_last_lr()[0]}

    def after_step(self) -> None:
        """Hook after each optimizer step (e.g. re-impose a constraint)."""

    def _stopped(self) -> dict[str, Path]:
        return end_stopped(self)

    def run(self) -> dict[str, Path]:
        """Train to ``train.max_steps`` and export; returns ``{name: path}`` ({} when stopped)."""
        from tqdm.auto import tqdm

        c = self.cfg
        try:
            if not self._ready:
                self.setup()
        except RunStopped:
            return self._stopped()
        self.out.mkdir(parents=True, exist_ok=True)
        save_yaml(c, self.out / "config.yaml")
        self.events.write("resume" if self.step else "start", step=self.step, max_steps=c.train.max_steps,
                          trainable_params=sum(p.numel() for p in self.params.values()),
                          config_hash=self.cfg_hash, **self.start_fields())
        bar = tqdm(total=c.train.max_steps, initial=self.step, desc=self.command, unit="step",
                   disable=not self.progress)
        t0, s0 = time.perf_counter(), self.step
        o = c.output
        while self.step < c.train.max_steps:
            if stop_requested(self.out):
                bar.close()
                return self._stopped()
            logs = self.train_step()
            write_step(self.events, self.step, c.train.max_steps, (t0, s0), logs)
            bar.update(1)
            bar.set_postfix(loss=f"{logs['loss']:.4g}")
            if due(o.sample_every, self.step, c.train.max_steps):
                self._sample()
            if due(o.checkpoint_every, self.step, c.train.max_steps):
                self.save_checkpoint()
        bar.close()
        self.train_time_s = time.perf_counter() - t0
        self.save_checkpoint()
        if o.sample_every:
            self._sample()
        outputs = self.export()
        for k, p in outputs.items():
            self.events.write("export", kind=k, path=str(p))
        self.events.write("done", step=self.step, outputs={k: str(v) for k, v in outputs.items()})
        self.events.close()
        return outputs

    def _sample(self) -> None:
        path = self.sample(self.out / "samples" / f"step-{self.step:08d}.png")
        self.events.write("sample", step=self.step, path=str(path))

    def ema_applied(self):
        import contextlib

        return self.ema.applied() if self.ema is not None else contextlib.nullcontext()
