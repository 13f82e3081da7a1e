"""The three pre-training stages of the tiny world: VAE, UNet (+ text encoder), classifier.

Each ``train_*`` function takes the :class:`~trainer.pretrain.PretrainConfig`, resumes
from its stage folder under ``cfg.output`` when a checkpoint is there, shows a tqdm
bar, and writes its product atomically:

* ``vae``        -> ``<output>/vae/final`` (AutoencoderKL with the measured scaling_factor)
* ``unet``       -> ``<export>/teacher`` (the full StableDiffusionPipeline folder, EMA weights)
* ``classifier`` -> ``<export>/classifier.safetensors``
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from . import classifier
from .data import captions_for, random_scenes, real_batch, render_scenes, step_batches, step_generator, vae_batch
from .loop import EMA, Stage, make_accelerator, set_lr
from .models import (
    SD15_SCHEDULER,
    make_pipeline,
    make_scheduler,
    make_text_encoder,
    make_tokenizer,
    make_unet,
    make_vae,
    save_pipeline_atomic,
)


def _fingerprint(cfg: Any, keys: tuple[str, ...]) -> dict[str, Any]:
    return {k: getattr(cfg, k) for k in ("version", "seed", *keys)}


def _bar(start: int, total: int, desc: str) -> tqdm:
    return tqdm(range(start, total), initial=start, total=total, desc=desc, dynamic_ncols=True, mininterval=2.0)


# -- VAE -----------------------------------------------------------------------------------------
def train_vae(cfg: Any) -> Path:
    """Train the AutoencoderKL on rendered scenes (L1 + a tiny KL, like SD's 1e-6), then measure its scale."""
    acc = make_accelerator(cfg.device)
    out = Path(cfg.output) / "vae"
    stage = Stage(out, _fingerprint(cfg, ("vae_steps", "vae_batch", "vae_lr", "vae_kl_weight")))
    torch.manual_seed(cfg.seed)
    vae = make_vae()
    with torch.no_grad():
        # Start the posterior nearly deterministic (std ~ 0.02 instead of 1): with SD's tiny KL
        # weight nothing pulls the variance up, and the decoder learns from clean latents at once.
        vae.quant_conv.bias[vae.config.latent_channels :].fill_(-8.0)
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_lr, weight_decay=0.0)
    start = stage.resume({"vae": vae}, {"opt": opt}, {})
    vae, opt = acc.prepare(vae, opt)
    vae.train()
    stage.begin(start)
    batches = step_batches(functools.partial(vae_batch, cfg.seed, cfg.vae_batch), start, cfg.vae_steps, cfg.workers)
    for step, x in zip(_bar(start, cfg.vae_steps, "vae"), batches):
        set_lr(opt, classifier.cosine_lr(step, cfg.vae_steps, cfg.vae_lr, warmup=100))
        x = x.to(acc.device)
        post = vae.encode(x).latent_dist
        rec = vae.decode(post.sample(generator=step_generator(cfg.seed, "vae", step))).sample
        l1 = (rec - x).abs().mean()
        kl = post.kl().mean()  # summed over latent elements, averaged over the batch
        # SD's VAE loss sums the reconstruction term over pixels before adding 1e-6 * KL; we
        # average it, so the KL is divided by the pixel count to keep SD's balance.
        loss = l1 + cfg.vae_kl_weight * kl / x[0].numel()
        opt.zero_grad(set_to_none=True)
        acc.backward(loss)
        acc.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        done = step + 1
        if done % 50 == 0 or done == cfg.vae_steps:
            stage.log(done, l1=l1.item(), kl=kl.item(), mse=F.mse_loss(rec, x).item())
        if done % cfg.checkpoint_every == 0 or done == cfg.vae_steps:
            stage.save(done, {"vae": acc.unwrap_model(vae)}, {"opt": opt}, {})
    vae = acc.unwrap_model(vae).eval()
    scale = measure_scaling_factor(vae, cfg.seed)
    vae = vae.cpu()
    vae.register_to_config(scaling_factor=scale)
    final = out / "final"
    _save_model_atomic(vae, final)
    l1_val = _vae_val_l1(vae, cfg.seed)
    (out / "summary.json").write_text(json.dumps({"scaling_factor": scale, "val_l1": l1_val}, indent=2))
    print(f"vae: scaling_factor={scale:.5f} val L1={l1_val:.4f} -> {final}")
    return final


@torch.no_grad()
def measure_scaling_factor(vae: Any, seed: int, n: int = 2048, batch: int = 256) -> float:
    """1 / std of sampled latents over ``n`` fresh scenes (how SD's 0.18215 was obtained)."""
    zs = []
    for i in range(n // batch):
        x, _ = real_batch(seed, "eval-ref", 10_000 + i, batch)
        post = vae.encode(x.to(vae.device) * 2 - 1).latent_dist
        zs.append(post.sample(generator=torch.Generator().manual_seed(i)).cpu())
    return float(f"{1.0 / torch.cat(zs).std().item():.5g}")


@torch.no_grad()
def _vae_val_l1(vae: Any, seed: int, n: int = 512) -> float:
    x, _ = real_batch(seed, "eval-ref", 20_000, n)
    rec = vae.decode(vae.encode(x * 2 - 1).latent_dist.mode()).sample
    return float(((rec + 1) / 2 - x).abs().mean())


def _save_model_atomic(model: Any, folder: Path) -> None:
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    model.save_pretrained(str(tmp), safe_serialization=True)
    os.chmod(tmp, 0o755)
    if folder.exists():
        shutil.rmtree(folder)
    tmp.rename(folder)


# -- UNet + text encoder -------------------------------------------------------------------------
def _file_digest(folder: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(folder.glob("*.safetensors")):
        h.update(p.read_bytes())
    return h.hexdigest()[:16]


@torch.no_grad()
def latent_bank(cfg: Any, vae: Any, vae_dir: Path, cache: Path, device: Any = "cpu") -> dict[str, Any]:
    """Encode ``cfg.unet_scenes`` fixed scenes once: posterior mean/std per scene, plus the scenes.

    Cached on disk keyed by the VAE weights' digest; training re-samples the
    posterior and re-captions each scene at every visit.
    """
    key = {"vae": _file_digest(vae_dir), "n": cfg.unet_scenes, "seed": cfg.seed}
    if cache.is_file():
        bank = torch.load(cache, map_location="cpu", weights_only=False)
        if bank.get("key") == key:
            return bank
    chunk = 256
    means, stds, scenes = [], [], []
    vae = vae.to(device)
    for i in tqdm(range((cfg.unet_scenes + chunk - 1) // chunk), desc="encode latents", dynamic_ncols=True):
        sc, seeds = random_scenes(cfg.seed, "bank", i, chunk)
        post = vae.encode(render_scenes(sc, seeds).to(device) * 2 - 1).latent_dist
        means.append(post.mean.half().cpu())
        stds.append(post.std.half().cpu())
        scenes += sc
    bank = {"key": key, "mean": torch.cat(means)[: cfg.unet_scenes], "std": torch.cat(stds)[: cfg.unet_scenes]}
    bank["scenes"] = scenes[: cfg.unet_scenes]
    from .io import atomic_torch_save

    atomic_torch_save(cache, bank)
    return bank


def min_snr_weights(alphas_cumprod: torch.Tensor, t: torch.Tensor, gamma: float) -> torch.Tensor:
    """Min-SNR-gamma loss weights for eps prediction: ``min(SNR, gamma) / SNR`` (gamma <= 0: all ones)."""
    if gamma <= 0:
        return torch.ones_like(t, dtype=torch.float32)
    ac = alphas_cumprod[t].float()
    snr = ac / (1 - ac)
    return snr.clamp(max=gamma) / snr


def _unet_batch(cfg: Any, bank: dict[str, Any], tokenizer: Any, scale: float, ac: torch.Tensor, step: int
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:  # fmt: skip
    """``(input_ids, x_t, t, noise)`` of UNet step ``step``: a pure function of the step (runs in workers)."""
    g = step_generator(cfg.seed, "unet", step)
    idx = torch.randint(bank["mean"].shape[0], (cfg.unet_batch,), generator=g)
    captions = captions_for([bank["scenes"][i] for i in idx], cfg.seed, "unet", step, cfg.cond_dropout)
    ids = tokenizer(captions, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                    return_tensors="pt").input_ids  # fmt: skip
    mean, std = bank["mean"][idx].float(), bank["std"][idx].float()
    x0 = (mean + std * torch.randn(mean.shape, generator=g)) * scale
    noise = torch.randn(x0.shape, generator=g)
    t = torch.randint(0, SD15_SCHEDULER["num_train_timesteps"], (cfg.unet_batch,), generator=g)
    a = ac[t].float().view(-1, 1, 1, 1)
    return ids, a.sqrt() * x0 + (1 - a).sqrt() * noise, t, noise


def _load_init(folder: str, unet: Any, text_encoder: Any) -> None:
    """Start from the UNet / text encoder of an earlier teacher folder (e.g. one trained on a GPU)."""
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModel

    src = Path(folder)
    if not (src / "unet" / "config.json").is_file() or not (src / "text_encoder" / "config.json").is_file():
        raise FileNotFoundError(f"unet_init {src}: expected a diffusers SD folder with unet/ and text_encoder/")
    unet.load_state_dict(UNet2DConditionModel.from_pretrained(str(src / "unet")).state_dict())
    text_encoder.load_state_dict(CLIPTextModel.from_pretrained(str(src / "text_encoder")).state_dict())


def _snapshot(folder: Path, step: int, emas: dict[str, EMA], unet: Any, text_encoder: Any) -> None:
    """EMA weights as fp16 safetensors (what the exported teacher would hold), small enough to copy off a machine."""
    from .io import save_safetensors

    for name, model in (("unet", unet), ("text_encoder", text_encoder)):
        keys = [k for k, _ in model.named_parameters()]
        tensors = {k: s.half() for k, s in zip(keys, emas[name].shadow)}
        save_safetensors(folder / f"{name}_ema.safetensors", tensors, metadata={"step": str(step)})


def train_unet(cfg: Any) -> Path:
    """Train UNet and text encoder jointly on cached latents; export the teacher folder (EMA weights)."""
    from diffusers import AutoencoderKL

    acc = make_accelerator(cfg.device)
    root = Path(cfg.output)
    vae_dir = root / "vae" / "final"
    if not (vae_dir / "config.json").is_file() and cfg.unet_init:
        vae_dir = Path(cfg.unet_init) / "vae"  # continuing a teacher: keep its latent space
    if not (vae_dir / "config.json").is_file():
        raise FileNotFoundError(f"{vae_dir}: no trained VAE; run `wadi pretrain --stage vae` first (same --output)")
    vae = AutoencoderKL.from_pretrained(str(vae_dir)).eval()
    out = root / "unet"
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # workers fork after the tokenizer is built
    keys = ("unet_steps", "unet_batch", "unet_lr", "unet_scenes", "cond_dropout", "ema_decay", "min_snr_gamma",
            "unet_init")
    stage = Stage(out, {**_fingerprint(cfg, keys), "vae": _file_digest(vae_dir)})
    tokenizer = make_tokenizer(out / "tokenizer")
    torch.manual_seed(cfg.seed)
    unet, text_encoder = make_unet(), make_text_encoder(tokenizer)
    if cfg.unet_init:
        _load_init(cfg.unet_init, unet, text_encoder)
    params = list(unet.parameters()) + list(text_encoder.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.unet_lr, weight_decay=0.01)
    emas = {"unet": EMA(unet.parameters(), cfg.ema_decay), "text_encoder": EMA(text_encoder.parameters(), cfg.ema_decay)}
    start = stage.resume({"unet": unet, "text_encoder": text_encoder}, {"opt": opt}, emas)
    bank = latent_bank(cfg, vae, vae_dir, out / "latents.pt", acc.device)
    vae = vae.cpu()
    scale = float(vae.config.scaling_factor)
    ac = make_scheduler().alphas_cumprod
    unet, text_encoder, opt = acc.prepare(unet, text_encoder, opt)
    unet.train()
    text_encoder.train()
    stage.begin(start)
    make = functools.partial(_unet_batch, cfg, bank, tokenizer, scale, ac)
    for step, batch in zip(_bar(start, cfg.unet_steps, "unet"), step_batches(make, start, cfg.unet_steps, cfg.workers)):
        set_lr(opt, classifier.cosine_lr(step, cfg.unet_steps, cfg.unet_lr, warmup=200))
        t_cpu = batch[2]
        ids, x_t, t, noise = (v.to(acc.device) for v in batch)
        # SD's pipeline calls the text encoder without an attention mask; train the same way.
        cond = text_encoder(ids)[0]
        pred = unet(x_t, t, cond).sample
        mse = ((pred.float() - noise) ** 2).mean(dim=(1, 2, 3))
        loss = (min_snr_weights(ac, t_cpu, cfg.min_snr_gamma).to(acc.device) * mse).mean()
        opt.zero_grad(set_to_none=True)
        acc.backward(loss)
        grad_norm = acc.clip_grad_norm_(params, 1.0)
        opt.step()
        for e in emas.values():
            e.update()
        done = step + 1
        if done % 50 == 0 or done == cfg.unet_steps:
            stage.log(done, loss=loss.item(), eps_mse=mse.mean().item(), grad_norm=float(grad_norm))
        if done % cfg.checkpoint_every == 0 or done == cfg.unet_steps:
            models = {"unet": acc.unwrap_model(unet), "text_encoder": acc.unwrap_model(text_encoder)}
            stage.save(done, models, {"opt": opt}, emas)
        if cfg.snapshot_every and done % cfg.snapshot_every == 0:
            _snapshot(Path(cfg.snapshot_dir or out), done, emas, unet, text_encoder)
    unet, text_encoder = acc.unwrap_model(unet).cpu().eval(), acc.unwrap_model(text_encoder).cpu().eval()
    emas["unet"].copy_to(unet.parameters())
    emas["text_encoder"].copy_to(text_encoder.parameters())
    pipe = make_pipeline(unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=make_scheduler())
    target = Path(cfg.export) / "teacher"
    save_pipeline_atomic(pipe, target, overwrite=True, dtype=torch.float16 if cfg.export_fp16 else None)
    print(f"teacher -> {target}")
    return target


# -- classifier ----------------------------------------------------------------------------------
def train_classifier(cfg: Any) -> Path:
    """Train the attribute classifier on augmented renders; report held-out accuracy per head."""
    acc = make_accelerator(cfg.device)
    out = Path(cfg.output) / "classifier"
    stage = Stage(out, _fingerprint(cfg, ("clf_steps", "clf_batch", "clf_lr")))
    torch.manual_seed(cfg.seed)
    model = classifier.AttributeClassifier()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.clf_lr, weight_decay=1e-4)
    start = stage.resume({"clf": model}, {"opt": opt}, {})
    model, opt = acc.prepare(model, opt)
    model.train()
    stage.begin(start)
    make = functools.partial(classifier.training_batch, cfg.seed, cfg.clf_batch)
    for step, (x, labels) in zip(_bar(start, cfg.clf_steps, "classifier"), step_batches(make, start, cfg.clf_steps, cfg.workers)):
        set_lr(opt, classifier.cosine_lr(step, cfg.clf_steps, cfg.clf_lr, warmup=100))
        x = x.to(acc.device)
        labels = {k: v.to(acc.device) for k, v in labels.items()}
        loss = classifier.classifier_loss(model(x), labels)
        opt.zero_grad(set_to_none=True)
        acc.backward(loss)
        opt.step()
        done = step + 1
        if done % 50 == 0 or done == cfg.clf_steps:
            stage.log(done, loss=loss.item())
        if done % cfg.checkpoint_every == 0 or done == cfg.clf_steps:
            stage.save(done, {"clf": acc.unwrap_model(model)}, {"opt": opt}, {})
    model = acc.unwrap_model(model).cpu().eval()
    accs = heldout_accuracy(model, cfg.seed)
    (out / "summary.json").write_text(json.dumps(accs, indent=2))
    target = Path(cfg.export) / "classifier.safetensors"
    meta = {"train_steps": str(cfg.clf_steps), "seed": str(cfg.seed), "heldout_accuracy": json.dumps(accs)}
    classifier.save_classifier(model, target, metadata=meta)
    print(f"classifier: held-out accuracy {accs} -> {target}")
    return target


@torch.no_grad()
def heldout_accuracy(model: classifier.AttributeClassifier, seed: int, n: int = 1024) -> dict[str, float]:
    """Per-head accuracy and exact-scene accuracy on fresh renders (stream ``eval-ref``, unseen in training)."""
    x, scenes = real_batch(seed, "eval-ref", 30_000, n)
    logits = model(x)
    labels = classifier.scene_labels(scenes)
    out = {}
    for k, lab in labels.items():
        keep = lab >= 0
        out[k] = round(float((logits[k].argmax(-1)[keep] == lab[keep]).float().mean()), 4)
    out["exact_scene"] = round(sum(p == s for p, s in zip(classifier.logits_to_scenes(logits), scenes)) / n, 4)
    return out
