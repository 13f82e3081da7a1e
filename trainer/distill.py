"""The WaDi distillation run: checks, setup, loop, checkpoints, samples, export.

``Distiller(cfg)`` validates everything that can be wrong with the inputs (config
values, prompt file, base folder, output folder, resume checkpoint) before any
model is loaded; ``run()`` trains and writes the outputs.  One frozen base serves
teacher, fake and student (:mod:`.adapters`); the per-step math is in :mod:`.step`.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..lorad.onestep import OFFICIAL_ALPHA_BAR_T, alpha_bar_at
from . import checkpoint
from .accel import make_accelerator
from .adapters import build_views
from .backbones import REQUIRED, check_one_step_alpha_bar, inspect_folder, load_backbone
from .checkpoint import OutputExistsError
from .config import ConfigError, DistillConfig, config_hash, save_yaml, schedule_length, validate
from .ema import EMA
from .events import EventLog, due, write_step
from .fingerprint import base_fingerprint
from .jobs import RunStopped, end_stopped, stop_requested
from .optim import clip_and_norm, make_lr_schedule, make_optimizer, make_scaler, sync_gradients
from .prompts import load_prompts
from .regression import (
    PAIR_SEED,
    PairBatch,
    Pairs,
    load_or_make_pairs,
    make_pairs,
    pairs_identity,
    regression_weight_at,
)
from .sampling import teacher_multistep
from .step import Batch, StepSettings, draw_batch, fake_micro_step, micro_step, student_sample
from .textcache import encode_cached

__all__ = ["Distiller", "OutputExistsError", "RunStopped", "make_accelerator"]


class Distiller:
    def __init__(self, cfg: DistillConfig, log=print, progress: bool = True,
                 extra_prompts: Sequence[str] = ()) -> None:
        """``extra_prompts`` are encoded with the training prompts (before the text encoders are
        released) into ``self.extra_cond``, e.g. for an evaluation after training."""
        validate(cfg)
        self.cfg, self.log, self.progress = cfg, log, progress
        self.extra_prompts = list(extra_prompts)
        # -- input checks (no model loaded yet) --------------------------------------------------
        d = cfg.data
        self.prompts = load_prompts(d.prompts, d.format, d.jsonl_key, d.max_prompts)
        self.kind, _ = inspect_folder(cfg.model.base, cfg.model.backbone)
        self._check_exports()
        self.out = Path(cfg.output.dir)
        self.acc = make_accelerator(cfg.train.mixed_precision)
        self.rank, self.world = self.acc.process_index, self.acc.num_processes
        self.main = self.acc.is_main_process
        self.global_batch = cfg.train.batch_size * self.world
        self.cfg_hash = config_hash(cfg)
        self.base_fp = base_fingerprint(cfg.model.base, REQUIRED[self.kind])
        self.resume_from = checkpoint.find_resume(cfg.resume, self.out)
        if self.resume_from is not None:
            self.resume_meta = checkpoint.check_compatible(self.resume_from, self.cfg_hash, cfg, self.base_fp,
                                                   self.global_batch * cfg.train.grad_accum)
        elif cfg.resume == "latest":
            self.log(f"note: no checkpoint in {checkpoint.checkpoint_root(self.out)} yet; starting from step 0")
        self._check_output()
        self.step = 0
        self._ready = False

    def _check_exports(self) -> None:
        if not self.cfg.output.export_single_file:
            return
        import json

        unet_cfg = json.loads((Path(self.cfg.model.base) / "unet" / "config.json").read_text()) \
            if self.kind != "pixart" else {}
        if self.kind != "sd" or unet_cfg.get("use_linear_projection"):
            raise ConfigError("output.export_single_file: single-file checkpoints are written for SD1.x bases only "
                              f"(this base is {self.kind}{' 2.x' if unet_cfg.get('use_linear_projection') else ''}); "
                              "use output.export_merged for a diffusers folder")
        from .singlefile import comfyui_refusal

        reason = comfyui_refusal(unet_cfg)
        if reason:
            raise ConfigError(f"output.export_single_file: {reason}")

    # -- output folder -----------------------------------------------------------------------------
    def _check_output(self) -> None:
        checkpoint.prepare_output(self.out, self.resume_from, self.cfg.resume, self.cfg.output.force, self.main)

    # -- setup -------------------------------------------------------------------------------------
    def _dtype(self) -> str:
        c = self.cfg
        if c.model.dtype != "auto":
            return c.model.dtype
        if self.acc.device.type == "cuda" and c.train.mixed_precision in ("fp16", "bf16"):
            return c.train.mixed_precision
        return "fp32"

    def stop_requested(self) -> bool:
        """The stop file (:mod:`.jobs`), agreed across processes: if any rank sees it, all stop
        at the same step (a rank leaving alone would hang the others in the next all-reduce)."""
        flag = stop_requested(self.out)
        if self.world > 1:
            t = torch.tensor([1.0 if flag else 0.0], device=self.acc.device)
            flag = bool(self.acc.reduce(t, reduction="sum").item() > 0)
        return flag

    def _check_stop(self) -> None:
        if self.stop_requested():
            raise RunStopped

    def setup(self) -> None:
        c = self.cfg
        dev = self.acc.device
        self._check_stop()
        self.bb = bb = load_backbone(c.model.base, self.kind, self._dtype()).to(dev)
        self._check_stop()
        self._text_features(bb, dev)
        self._check_stop()
        # One base, three views.
        self.views = build_views(bb.denoiser, c.adapter)
        if c.train.gradient_checkpointing:
            bb.enable_gradient_checkpointing(bb.denoiser)
            if self.views.student_module is not bb.denoiser:
                bb.enable_gradient_checkpointing(self.views.student_module)
        self.views.student_module.to(dev)
        v = c.vsd
        ab_T = OFFICIAL_ALPHA_BAR_T if v.alpha_bar == "official" else alpha_bar_at(bb.alphas_cumprod, v.timestep)
        check_one_step_alpha_bar(ab_T, f"vsd.alpha_bar={v.alpha_bar} at vsd.timestep={v.timestep}")
        self.settings = StepSettings(v.timestep, ab_T, v.guidance_scale, v.fake_guidance_scale, (v.t_min, v.t_max),
                                     (v.fake_t_min, v.fake_t_max), v.null_prob, v.weighting, v.regression_weight,
                                     v.fake_weighting)
        self.latent = bb.latent_shape(v.resolution)
        self.pairs = self._regression_pairs() if v.regression_weight > 0 else None
        o = c.optim
        s_params, f_params = self.views.student_param_groups(o.conv_lr_scale), self.views.fake.parameters()
        self.opt_s = make_optimizer(s_params, o.student_lr, o, dev, self.log)
        self.opt_f = make_optimizer(f_params, o.fake_lr, o, dev, self.log)
        length = schedule_length(c)
        self.sched_s = make_lr_schedule(self.opt_s, o, length)
        self.sched_f = make_lr_schedule(self.opt_f, o, length * c.vsd.fake_updates)
        amp = c.train.mixed_precision == "fp16" and self.acc.native_amp
        if c.train.mixed_precision == "fp16" and not self.acc.native_amp and self.main:
            self.log(f"note: fp16 autocast is not available on {dev.type}; computing in float32")
        self.scalers = (make_scaler("fp16", dev), make_scaler("fp16", dev)) if amp else (None, None)
        self.ema = EMA(self.views.student.params, c.train.ema_decay) if c.train.ema_decay > 0 else None
        self.gen = torch.Generator().manual_seed(c.train.seed)
        if self.resume_from is not None:
            self._restore(checkpoint.load_checkpoint(self.resume_from))
        self.events = EventLog(self.out / "events.jsonl", enabled=self.main,
                               tensorboard_dir=self.out / "tensorboard" if c.output.tensorboard else None,
                               log=self.log)
        self._ready = True

    def _text_features(self, bb, dev) -> None:
        """Features of the prompts, the null prompt, the sample and extra prompts.

        With ``data.cache_text`` (default) every prompt is encoded once into a safetensors
        cache, the table is kept in host memory and the text encoders are freed.  Without it
        (millions of prompts) each batch is encoded on the fly and the encoders stay loaded.
        """
        c = self.cfg
        self.sample_prompts = list(c.output.sample_prompts) or self.prompts[: c.output.num_samples]
        cache_dir = self._cache_dir() if c.data.cache_text else None
        ident = bb.encoder_identity()

        def enc(p):
            return bb.encode_prompts(p, dev)

        self.table = None
        with self.acc.main_process_first():  # the main process writes the cache, the others read it
            if c.data.cache_text:
                self.table, fresh = encode_cached(self.prompts, enc, cache_dir, ident,
                                                  progress=self.progress and self.main)
                if self.main:
                    self.log(f"text features: {len(self.prompts)} prompts ({fresh} encoded now, "
                             f"{len(self.prompts) - fresh} from cache)")
            self.sample_cond = encode_cached(self.sample_prompts, enc, cache_dir, ident, progress=False)[0].to(dev)
            self.extra_cond = None
            if self.extra_prompts:
                self.extra_cond = encode_cached(self.extra_prompts, enc, cache_dir, ident, progress=False)[0]
        self.null = bb.null_cond(dev).float()
        if self.table is not None:
            bb.release_text_encoders()

    def _cache_dir(self) -> Path:
        """Where text features and regression pairs are cached: ``data.cache_dir``, else beside the output."""
        return Path(self.cfg.data.cache_dir) if self.cfg.data.cache_dir else self.out.parent / ".text_cache"

    def _regression_pairs(self) -> Pairs:
        """The teacher's multi-step outputs for the regression term: cached beside the text features."""
        c, dev, v = self.cfg, self.acc.device, self.cfg.vsd
        ident = pairs_identity(self.base_fp, self.prompts, v.regression_pairs, v.regression_steps, v.guidance_scale,
                               PAIR_SEED, tuple(self.latent))
        folder = self._cache_dir() if c.data.cache_text else self.out
        bar = tqdm(total=v.regression_pairs, desc=f"teacher pairs ({v.regression_steps} steps)",
                   disable=not (self.progress and self.main))

        def sample(idx: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
            with self.views.teacher() as m:
                return teacher_multistep(self.bb, m, self.batch_cond(idx), self.null, z.to(dev),
                                         v.regression_steps, v.guidance_scale)

        def make() -> Pairs:
            self.log(f"regression pairs: sampling {v.regression_pairs} with the teacher "
                     f"({v.regression_steps} steps, CFG {v.guidance_scale:g})")
            return make_pairs(sample, v.regression_pairs, len(self.prompts), tuple(self.latent), PAIR_SEED,
                              progress=lambda done, n: bar.update(done - bar.n))

        with self.acc.main_process_first():  # the main process samples and caches, the others read
            pairs = load_or_make_pairs(folder / f"pairs-{ident}.safetensors", make,
                                       self.log if self.main else (lambda *_: None))
        bar.close()
        return pairs

    def pair_batch(self, batch: Batch) -> PairBatch | None:
        """The regression pairs picked by ``batch.pair_idx``, on the device (None when the term is off)."""
        if self.pairs is None or batch.pair_idx is None:
            return None
        idx, dev = batch.pair_idx.cpu(), self.acc.device
        return PairBatch(self.pairs.z[idx].to(dev), self.pairs.x0[idx].to(dev),
                         self.batch_cond(self.pairs.prompt_idx[idx]))

    def batch_cond(self, idx: torch.Tensor):
        """Text features of the prompts at ``idx`` (from the host-memory table, or encoded now)."""
        if self.table is not None:
            return self.table.index(idx.cpu()).to(self.acc.device)
        return self.bb.encode_prompts([self.prompts[i] for i in idx.tolist()], self.acc.device).float()

    # -- state -------------------------------------------------------------------------------------
    def _trainer_state(self) -> dict:
        st = {
            "opt_student": self.opt_s.state_dict(), "opt_fake": self.opt_f.state_dict(),
            "sched_student": self.sched_s.state_dict(), "sched_fake": self.sched_f.state_dict(),
            "data_generator": self.gen.get_state(), "torch_rng": torch.get_rng_state(),
        }
        for name, sc in zip(("scaler_student", "scaler_fake"), self.scalers):
            if sc is not None:
                st[name] = sc.state_dict()
        return st

    def _restore(self, snap: checkpoint.Snapshot) -> None:
        self.views.student.load_state(snap.student, f"{self.resume_from}/student.safetensors")
        self.views.fake.load_state(snap.fake, f"{self.resume_from}/fake.safetensors")
        st = snap.trainer_state
        self.opt_s.load_state_dict(st["opt_student"])
        self.opt_f.load_state_dict(st["opt_fake"])
        self.sched_s.load_state_dict(st["sched_student"])
        self.sched_f.load_state_dict(st["sched_fake"])
        self.gen.set_state(st["data_generator"])
        torch.set_rng_state(st["torch_rng"])
        for name, sc in zip(("scaler_student", "scaler_fake"), self.scalers):
            if sc is not None and name in st:
                sc.load_state_dict(st[name])
        checkpoint.finish_restore(self, snap)

    def save_checkpoint(self) -> Path | None:
        path = None
        if self.main:
            snap = checkpoint.Snapshot(
                self.step, self.views.student.state(), self.views.fake.state(),
                self.ema.state_dict() if self.ema is not None else None, self._trainer_state(),
                {"config_hash": self.cfg_hash, "base_fingerprint": self.base_fp,
                 "global_batch": self.global_batch * self.cfg.train.grad_accum, "adapter": self.cfg.adapter.kind},
            )
            try:
                path = checkpoint.save_checkpoint(checkpoint.checkpoint_root(self.out), snap, self.cfg,
                                          self.cfg.output.keep_checkpoints)
                self.events.write("checkpoint", step=self.step, path=str(path))
            except OSError as e:
                # A full disk must not end a long run: the previous checkpoint is intact; say so and go on.
                self.log(f"warning: checkpoint at step {self.step} failed ({e}); previous checkpoints are intact")
                self.events.write("error", step=self.step, message=f"checkpoint failed: {e}")
        self.acc.wait_for_everyone()
        return path

    # -- training ----------------------------------------------------------------------------------
    def train_step(self) -> dict[str, float]:
        c, dev = self.cfg, self.acc.device
        accum = c.train.grad_accum
        ls = lf = 0.0
        n_pairs = len(self.pairs) if self.pairs is not None else 0
        step_draw = draw_batch(self.gen, len(self.prompts), self.global_batch * accum, self.latent, self.settings,
                               n_pairs)
        v = c.vsd
        settings = dataclasses.replace(self.settings, regression_weight=regression_weight_at(
            v.regression_weight, v.regression_ramp, self.step, c.train.max_steps))
        for micro in range(accum):
            batch = step_draw.part(micro, self.rank, self.world, c.train.batch_size).to(dev)
            cond = self.batch_cond(batch.prompt_idx)
            a, b = micro_step(self.bb, self.views, batch, cond, self.null, settings, self.acc.autocast,
                              1.0 / accum, self.scalers, self.pair_batch(batch))
            ls, lf = ls + a / accum, lf + b / accum
        norms = [self._optimizer_step(self.views.student.parameters(), self.opt_s, self.sched_s, self.scalers[0]),
                 self._optimizer_step(self.views.fake.parameters(), self.opt_f, self.sched_f, self.scalers[1])]
        # Two time-scale updates (DMD2's TTUR; not in the paper, whose loop is 1:1): extra fake-score
        # steps on fresh student samples so the fake keeps up with a student that moves fast.
        for _ in range(c.vsd.fake_updates - 1):
            lf = self._extra_fake_update()
        if self.ema is not None:
            self.ema.update()
        self.step += 1
        losses = torch.tensor([ls, lf], device=dev)
        if self.world > 1:
            losses = self.acc.reduce(losses, reduction="mean")
        return {"loss_student": float(losses[0]), "loss_fake": float(losses[1]), "grad_norm_student": norms[0],
                "grad_norm_fake": norms[1], "lr_student": self.sched_s.get_last_lr()[0],
                "lr_fake": self.sched_f.get_last_lr()[0]}

    def _optimizer_step(self, params, opt, sched, scaler) -> float:
        sync_gradients(params, self.acc)
        if scaler is not None:
            scaler.unscale_(opt)
        norm = clip_and_norm(params, self.cfg.optim.grad_clip)
        if scaler is not None:
            scaler.step(opt)
            scaler.update()
        else:
            opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        return norm

    def _extra_fake_update(self) -> float:
        """One fake-score optimizer step on a fresh draw (its own z, t and noise; student frozen)."""
        c, dev = self.cfg, self.acc.device
        accum = c.train.grad_accum
        draw = draw_batch(self.gen, len(self.prompts), self.global_batch * accum, self.latent, self.settings)
        lf = 0.0
        for micro in range(accum):
            batch = draw.part(micro, self.rank, self.world, c.train.batch_size).to(dev)
            cond = self.batch_cond(batch.prompt_idx)
            x0 = student_sample(self.bb, self.views, batch, cond, self.settings, self.acc.autocast)
            lf += fake_micro_step(self.bb, self.views, x0, batch, cond, self.null, self.acc.autocast,
                                  1.0 / accum, self.scalers[1], self.settings.fake_weighting) / accum
        self._optimizer_step(self.views.fake.parameters(), self.opt_f, self.sched_f, self.scalers[1])
        return lf

    def run(self) -> dict[str, Path]:
        from tqdm.auto import tqdm

        from .export import export_outputs
        from .previews import sample_grid

        try:
            if not self._ready:
                self.setup()
        except RunStopped:
            return self._stopped()
        c = self.cfg
        if self.main:
            self.out.mkdir(parents=True, exist_ok=True)
            save_yaml(c, self.out / "config.yaml")
            self.events.write("resume" if self.step else "start", step=self.step, max_steps=c.train.max_steps,
                              adapter=c.adapter.kind, prompts=len(self.prompts), processes=self.world,
                              global_batch=self.global_batch * c.train.grad_accum,
                              student_params=self.views.student.num_params(),
                              fake_params=self.views.fake.num_params(), alpha_bar_T=self.settings.alpha_bar_T,
                              config_hash=self.cfg_hash)
        bar = tqdm(total=c.train.max_steps, initial=self.step, desc=f"distill ({c.adapter.kind})", unit="step",
                   disable=not (self.progress and self.main))
        t0, s0 = time.perf_counter(), self.step
        while self.step < c.train.max_steps:
            if self.stop_requested():
                bar.close()
                return self._stopped()
            logs = self.train_step()
            write_step(self.events, self.step, c.train.max_steps, (t0, s0), logs)
            bar.update(1)
            bar.set_postfix(loss_s=f"{logs['loss_student']:.4g}", loss_f=f"{logs['loss_fake']:.4g}")
            if due(c.output.sample_every, self.step, c.train.max_steps):
                self._sample(sample_grid)
            if due(c.output.checkpoint_every, self.step, c.train.max_steps):
                self.save_checkpoint()
        bar.close()
        self.train_time_s = time.perf_counter() - t0
        self.save_checkpoint()
        outputs = {}
        if c.output.sample_every:
            self._sample(sample_grid)
        if self.main:
            outputs = export_outputs(self)
            self.events.write("done", step=self.step, outputs={k: str(v) for k, v in outputs.items()})
            self.events.close()
        self.acc.wait_for_everyone()
        return outputs

    def _stopped(self) -> dict[str, Path]:
        return end_stopped(self)

    def _sample(self, grid_fn) -> None:
        if self.main:
            path = grid_fn(self, self.out / "samples" / f"step-{self.step:08d}.png")
            self.events.write("sample", step=self.step, path=str(path))
        self.acc.wait_for_everyone()
