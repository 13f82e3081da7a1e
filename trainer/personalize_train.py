"""The personalization run: a DreamBooth-style LoRaD adapter on a base model or on a WaDi student.

One frozen denoiser; the new adapter (``"personal"``) is injected over it with
:mod:`lorad.inject`.  On a student the student's ``.lorad`` is loaded as adapter
``"student"``, frozen, and both are active in training: angles add, so the personal
adapter learns a rotation on top of the student's (``docs/personalization.md``).

Objectives (``objective.kind``; ``auto`` picks by target):

* ``eps`` (base model, DreamBooth's): ``x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) n`` with
  ``t ~ U{t_min..t_max}`` and ``x0`` a sample of the VAE posterior; loss ``MSE(eps(x_t, t), n)``.
* ``onestep`` (student): a fraction of each batch at the student's ``T`` with the x0
  reconstruction ``MSE((x_T - sqrt(1 - abar_T) eps(x_T, T)) / sqrt(abar_T), x0)`` - exactly what
  one-step sampling computes - and the rest at random ``t`` with the eps-MSE, which keeps the
  adapter a denoiser-shaped change of the weights instead of a memorised mapping at T only.

Prior preservation adds the same loss on class images that the model being tuned generated
itself (the base by DDIM + CFG, a student in its one step), cached under ``prior.class_dir``.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..lorad import inject
from .backbones import TextCond, load_backbone
from .finetune import FineTune
from .imagefolder import load_images, scan_folder
from .personalize import DEFAULT_NAME, NOT_HASHED, PersonalizeConfig, from_dict, objective_of, validate
from .sampling import one_step, save_grid, seeded_noise, teacher_multistep
from .textcache import encode_cached
from .vsd import noisy, one_step_x0

__all__ = ["Personalizer", "ADAPTER"]

ADAPTER = "personal"
STUDENT = "student"


class Personalizer(FineTune):
    command = "personalize"

    def __init__(self, cfg: PersonalizeConfig, log=print, progress: bool = True) -> None:
        super().__init__(cfg, validate, from_dict, NOT_HASHED, log, progress,
                         extra_files=(cfg.model.student, cfg.output.preview_student))
        self.objective = objective_of(cfg)

    # -- inputs ---------------------------------------------------------------------------------
    def check_inputs(self) -> None:
        d = self.cfg.data
        self.examples = scan_folder(d.images, d.captions, d.instance_prompt, d.jsonl_key)

    def _student_names(self) -> tuple[str, ...]:
        return (STUDENT,) if self.cfg.model.student else ()

    def build(self) -> dict[str, nn.Parameter]:
        from .cmd_sample import load_student, one_step_params

        c, dev = self.cfg, self.device
        self.bb = bb = load_backbone(c.model.base, self.kind, self._dtype()).to(dev)
        den = bb.denoiser
        student_file = c.model.student or c.output.preview_student
        self.student_file = load_student(bb, student_file) if student_file else None
        self.T, self.ab_T = one_step_params(self.student_file, bb, None, None)
        inject.inject(den, ADAPTER, c.adapter.targets, rank=c.adapter.rank, seed=c.adapter.seed, freeze_base=True)
        for p in inject.adapter_parameters(den, STUDENT) if self.student_file is not None else ():
            p.requires_grad_(False)  # inject keeps earlier adapters trainable; the student stays frozen
        inject.set_active(den, self._student_names() + (ADAPTER,))
        self.check_stop()
        self._text()
        self.check_stop()
        res = c.data.resolution or bb.sample_size * bb.vae_scale
        self.latent = bb.latent_shape(res)
        images = load_images([e.path for e in self.examples], res, c.data.center_crop).to(dev)
        self.mean, self.std = bb.encode_dist(images)
        self.class_latents = self._class_latents(res) if c.prior.enabled else None
        return inject.named_adapter_parameters(den, ADAPTER)

    def _text(self) -> None:
        """Features of every caption, the class prompt and the sample prompts; then free the encoders."""
        c, bb = self.cfg, self.bb
        captions = list(dict.fromkeys(e.caption for e in self.examples))
        self.caption_idx = torch.tensor([captions.index(e.caption) for e in self.examples])
        self.sample_prompts = list(c.output.sample_prompts) or list(dict.fromkeys(
            [c.data.instance_prompt.strip()] + captions))[: c.output.num_samples]
        cache = Path(c.data.cache_dir) if c.data.cache_dir else self.out.parent / ".text_cache"
        ident = bb.encoder_identity()

        def enc(prompts):
            return bb.encode_prompts(prompts, self.device)

        self.captions = encode_cached(captions, enc, cache, ident, progress=False)[0]
        self.class_cond = (encode_cached([c.data.class_prompt.strip()], enc, cache, ident, progress=False)[0]
                           if c.prior.enabled else None)
        self.sample_cond = encode_cached(self.sample_prompts, enc, cache, ident, progress=False)[0].to(self.device)
        self.null = bb.null_cond(self.device).float()
        bb.release_text_encoders()

    # -- prior preservation ---------------------------------------------------------------------
    def _class_key(self, res: int) -> str:
        c, p = self.cfg, self.cfg.prior
        how = {"base": self.base_fp, "class_prompt": c.data.class_prompt.strip(), "resolution": res,
               "by": "student-1step" if c.model.student else f"ddim{p.steps}-cfg{p.guidance:g}"}
        return hashlib.sha256(json.dumps(how, sort_keys=True).encode()).hexdigest()[:16]

    @torch.no_grad()
    def _class_latents(self, res: int) -> Tensor:
        """``prior.num_images`` class latents, generated by the model being tuned and cached on disk.

        The cache file grows batch by batch (atomically), so a stopped run keeps what it made.
        """
        from safetensors.torch import load_file, save_file
        from tqdm.auto import tqdm

        from ..lorad.fsutil import atomic_save

        c, p, bb = self.cfg, self.cfg.prior, self.bb
        folder = Path(p.class_dir) if p.class_dir else self.out / "class_images"
        key = self._class_key(res)
        path = folder / f"class-{key}.safetensors"
        have = load_file(str(path))["latents"] if path.is_file() else torch.zeros(0, *self.latent)
        todo = p.num_images - have.shape[0]
        if todo <= 0:
            return have[: p.num_images].to(self.device)
        bar = tqdm(total=todo, desc="class images", unit="img", disable=not self.progress)
        batch = max(1, c.train.batch_size)
        den = bb.denoiser
        with inject.active_adapters(den, self._student_names()):
            while have.shape[0] < p.num_images:
                self.check_stop()
                n = min(batch, p.num_images - have.shape[0])
                idx = range(have.shape[0], have.shape[0] + n)
                noise = seeded_noise([1_000_003 + i for i in idx], self.latent).to(self.device)
                cond = self.class_cond.expand(n).to(self.device)
                if c.model.student:
                    lat = one_step(bb, den, cond, noise, self.ab_T, self.T)
                else:
                    lat = teacher_multistep(bb, den, cond, self.null, noise, p.steps, p.guidance)
                have = torch.cat([have, lat.float().cpu()])
                atomic_save(path, lambda tmp, h=have: save_file({"latents": h.contiguous()}, str(tmp),
                                                               metadata={"class_prompt": c.data.class_prompt}))
                bar.update(n)
        bar.close()
        grid = bb.decode(have[:16].to(self.device))
        save_grid([grid], ["class images"], folder / f"class-{key}.png", captions=[c.data.class_prompt] * 16)
        return have.to(self.device)

    # -- one step -------------------------------------------------------------------------------
    def draw(self, gen: torch.Generator, n: int) -> dict[str, Tensor]:
        ob = self.cfg.objective
        shape = (n, *self.latent)
        d = {"idx": torch.randint(0, len(self.examples), (n,), generator=gen),
             "z": torch.randn(shape, generator=gen),  # VAE posterior sample
             "noise": torch.randn(shape, generator=gen),
             "t": torch.randint(ob.t_min, ob.t_max + 1, (n,), generator=gen),
             "at_T": torch.rand(n, generator=gen) < ob.onestep_fraction}
        if self.class_latents is not None:
            d["cidx"] = torch.randint(0, self.class_latents.shape[0], (n,), generator=gen)
            d["cnoise"] = torch.randn(shape, generator=gen)
            d["ct"] = torch.randint(ob.t_min, ob.t_max + 1, (n,), generator=gen)
            d["c_at_T"] = torch.rand(n, generator=gen) < ob.onestep_fraction
        return d

    def _objective(self, x0: Tensor, cond: TextCond, noise: Tensor, t: Tensor, at_T: Tensor) -> tuple[Tensor, dict]:
        bb, den, dev = self.bb, self.bb.denoiser, self.device
        if self.objective == "eps":
            x_t = noisy(x0, noise, bb.alpha_bar(t))
            return F.mse_loss(bb.eps(den, x_t, t, cond), noise), {}
        ob = self.cfg.objective
        t = torch.where(at_T.to(dev), torch.full_like(t, self.T), t)
        ab = torch.where(at_T.to(dev), torch.full(t.shape, self.ab_T, device=dev), bb.alpha_bar(t))
        x_t = noisy(x0, noise, ab)
        eps = bb.eps(den, x_t, t, cond)
        per_x0 = ((one_step_x0(eps, x_t, self.ab_T) - x0) ** 2).flatten(1).mean(1)
        per_eps = ((eps - noise) ** 2).flatten(1).mean(1)
        m = at_T.to(dev)
        l_x0 = per_x0[m].mean() if m.any() else x0.new_zeros(())
        l_eps = per_eps[~m].mean() if (~m).any() else x0.new_zeros(())
        loss = ob.x0_weight * l_x0 + ob.eps_weight * l_eps
        return loss, {"x0": float(l_x0.detach()), "eps": float(l_eps.detach())}

    def loss(self, b: dict[str, Tensor]) -> tuple[Tensor, dict[str, float]]:
        dev = self.device
        idx = b["idx"]
        x0 = self.mean[idx.to(dev)] + self.std[idx.to(dev)] * b["z"].to(dev)
        cond = self.captions.index(self.caption_idx[idx]).to(dev)
        loss, parts = self._objective(x0, cond, b["noise"].to(dev), b["t"].to(dev), b["at_T"])
        out = {"instance": float(loss.detach()), **parts}
        if self.class_latents is not None:
            cx0 = self.class_latents[b["cidx"].to(dev)]
            ccond = self.class_cond.expand(cx0.shape[0]).to(dev)
            lp, _ = self._objective(cx0, ccond, b["cnoise"].to(dev), b["ct"].to(dev), b["c_at_T"])
            loss = loss + self.cfg.prior.weight * lp
            out["prior"] = float(lp.detach())
        return loss, out

    # -- outputs ----------------------------------------------------------------------------------
    @torch.no_grad()
    def sample(self, path: Path) -> Path:
        """Grid: without / with the adapter; one step for students, DDIM + CFG for a base model."""
        c, bb, den = self.cfg, self.bb, self.bb.denoiser
        cond = self.sample_cond
        noise = seeded_noise(range(len(cond)), self.latent).to(self.device)
        rows, labels = [], []
        o = c.output
        with self.ema_applied():
            if not c.model.student:
                for names, lab in (((), "base"), ((ADAPTER,), "personal")):
                    with inject.active_adapters(den, names):
                        lat = teacher_multistep(bb, den, cond, self.null, noise, o.sample_steps, o.sample_guidance)
                    rows.append(bb.decode(lat))
                    labels.append(f"{lab} {o.sample_steps}-step")
            if self.student_file is not None:
                for names, lab in (((STUDENT,), "student"), ((STUDENT, ADAPTER), "student+personal")):
                    with inject.active_adapters(den, names):
                        rows.append(bb.decode(one_step(bb, den, cond, noise, self.ab_T, self.T)))
                    labels.append(f"{lab} 1-step")
        return save_grid(rows, labels, path, captions=self.sample_prompts)

    def export(self) -> dict[str, Path]:
        from ..lorad.bridge import export_adapter
        from .export import arch_name

        c = self.cfg
        name = c.output.name or DEFAULT_NAME
        path = self.out / f"{name}.lorad.safetensors"
        on = "student" if c.model.student else "base"
        prov = {"method": "DreamBooth-style LoRaD personalization", "trained_on": on,
                "objective": self.objective, "steps": self.step, "lr": c.optim.lr, "rank": c.adapter.rank,
                "batch": self.batch, "seed": c.train.seed, "images": len(self.examples),
                "instance_prompt": c.data.instance_prompt.strip(), "class_prompt": c.data.class_prompt.strip(),
                "prior_preservation": c.prior.enabled, "prior_weight": c.prior.weight,
                "base_model": str(c.model.base), "base_fingerprint": self.base_fp, "config_hash": self.cfg_hash}
        if c.model.student:
            prov["student"] = str(c.model.student)
            prov["student_sha256"] = self.student_file.metadata.get("modelspec.hash_sha256", "")
        usage = ("stack on the WaDi student it was trained on (both active)" if c.model.student else
                 "use on the base model, or stack on a WaDi student of it (angles add)")
        with self.ema_applied():
            p = export_adapter(self.bb.denoiser, ADAPTER, path, arch=arch_name(self.bb),
                               target_preset=c.adapter.targets,
                               title=c.output.title or f"LoRaD personalization '{c.data.instance_prompt.strip()}'",
                               trigger_phrase=c.data.instance_prompt.strip(), usage_hint=usage, provenance=prov,
                               force=True, dtype=torch.float32)
        return {"adapter": p}

    def start_fields(self) -> dict:
        return {"images": len(self.examples), "objective": self.objective, "on": "student" if self.cfg.model.student
                else "base", "prior": self.cfg.prior.enabled}
