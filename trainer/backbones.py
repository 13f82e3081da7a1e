"""The one place that knows diffusers/transformers model call signatures.

A :class:`Backbone` wraps a diffusers folder (SD1.5/2.x, SDXL, PixArt-alpha/sigma)
and exposes what the distillation loop needs in one shape for all of them:

* ``encode_prompts(prompts) -> TextCond`` - text features exactly as the standard
  pipelines build them at inference (SD: CLIP last hidden state, **no attention
  mask** unless the encoder's config asks for one - the official WaDi code passes a
  mask in training only, so train and inference features differ; SDXL: penultimate states of both
  encoders + pooled; PixArt: T5 states + mask).
* ``eps(model, x_t, t, cond)`` - an eps prediction from any denoiser view (teacher,
  fake, student), converting v-prediction to eps and taking the eps half of a
  learned-sigma output.
* ``decode(latents)`` - images in [0, 1].
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

__all__ = ["BaseModelError", "TextCond", "Backbone", "inspect_folder", "load_backbone", "load_tokenizer",
           "REQUIRED"]

PIPELINE_KINDS = {
    "StableDiffusionPipeline": "sd",
    "StableDiffusionXLPipeline": "sdxl",
    "PixArtAlphaPipeline": "pixart",
    "PixArtSigmaPipeline": "pixart",
}
REQUIRED: dict[str, tuple[str, ...]] = {
    "sd": ("unet", "vae", "text_encoder", "tokenizer", "scheduler"),
    "sdxl": ("unet", "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "scheduler"),
    "pixart": ("transformer", "vae", "text_encoder", "tokenizer", "scheduler"),
}
_WEIGHT_SUFFIXES = (".safetensors", ".bin")
_TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "spiece.model", "tokenizer_config.json")
PIXART_MAX_TOKENS = 120  # PixArt-alpha's T5 sequence length (its pipeline default)


class BaseModelError(ValueError):
    """The base model folder is missing, malformed or incomplete; the message names the part."""


@dataclass
class TextCond:
    """Text conditioning for a batch: token features, SDXL's pooled vector, PixArt's mask."""

    embeds: Tensor
    pooled: Tensor | None = None
    mask: Tensor | None = None

    def __len__(self) -> int:
        return self.embeds.shape[0]

    def _map(self, fn) -> TextCond:
        return TextCond(fn(self.embeds), None if self.pooled is None else fn(self.pooled),
                        None if self.mask is None else fn(self.mask))

    def index(self, idx: Tensor | Sequence[int] | slice) -> TextCond:
        return self._map(lambda t: t[idx])

    def to(self, device, dtype: torch.dtype | None = None) -> TextCond:
        def mv(t: Tensor) -> Tensor:
            return t.to(device, dtype) if dtype is not None and t.is_floating_point() else t.to(device)
        return self._map(mv)

    def float(self) -> TextCond:
        """Features as float32 (masks stay integer)."""
        return TextCond(self.embeds.float(), None if self.pooled is None else self.pooled.float(), self.mask)

    def expand(self, n: int) -> TextCond:
        return self._map(lambda t: t.expand(n, *t.shape[1:]))

    @staticmethod
    def cat(parts: Sequence[TextCond]) -> TextCond:
        def c(attr):
            vals = [getattr(p, attr) for p in parts]
            return None if vals[0] is None else torch.cat(vals, 0)
        return TextCond(c("embeds"), c("pooled"), c("mask"))

    def where(self, drop: Tensor, null: TextCond) -> TextCond:
        """Per-sample: ``null`` where ``drop`` is True, else self (null has batch 1)."""
        def w(a: Tensor | None, b: Tensor | None) -> Tensor | None:
            if a is None:
                return None
            m = drop.view(-1, *([1] * (a.dim() - 1))).to(a.device)
            return torch.where(m, b.to(a.dtype).expand_as(a), a)
        return TextCond(w(self.embeds, null.embeds), w(self.pooled, null.pooled), w(self.mask, null.mask))


def _read_json(path: Path, what: str) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BaseModelError(f"{what}: {path} is missing") from None
    except json.JSONDecodeError as e:
        raise BaseModelError(f"{what}: {path} is not valid JSON ({e.msg})") from None


def _component_problem(folder: Path, name: str) -> str | None:
    sub = folder / name
    if not sub.is_dir():
        return f"{name}/ (folder missing)"
    files = [p.name for p in sub.iterdir()]
    if name.startswith("tokenizer"):
        return None if any(f in files for f in _TOKENIZER_FILES) else f"{name}/ (no tokenizer files)"
    if name == "scheduler":
        return None if "scheduler_config.json" in files else f"{name}/scheduler_config.json"
    if "config.json" not in files:
        return f"{name}/config.json"
    if not any(f.endswith(_WEIGHT_SUFFIXES) for f in files):
        return f"{name}/ (no .safetensors or .bin weights)"
    return None


def inspect_folder(folder: str | Path, backbone: str = "auto") -> tuple[str, dict]:
    """Check that ``folder`` is a complete diffusers folder; return ``(kind, model_index)``."""
    folder = Path(folder)
    if not folder.is_dir():
        raise BaseModelError(f"base model {folder} is not a folder (model.base must be a diffusers folder)")
    index = _read_json(folder / "model_index.json", f"base model {folder}")
    cls = index.get("_class_name", "")
    kind = PIPELINE_KINDS.get(cls)
    if backbone != "auto":
        if kind is not None and kind != backbone:
            raise BaseModelError(f"{folder}: model.backbone is {backbone!r} but model_index.json says {cls} ({kind})")
        kind = backbone
    if kind is None:
        raise BaseModelError(
            f"{folder}/model_index.json: pipeline {cls!r} is not supported; expected one of {sorted(PIPELINE_KINDS)}"
            " (or set model.backbone)"
        )
    missing = [p for p in (_component_problem(folder, n) for n in REQUIRED[kind]) if p]
    if missing:
        raise BaseModelError(f"base model {folder} ({kind}) is missing: {', '.join(missing)}")
    return kind, index


def _bcast(v: Tensor, like: Tensor) -> Tensor:
    return v.view(-1, *([1] * (like.dim() - 1))).to(like.device, torch.float32)


class Backbone:
    """A loaded base model: denoiser (frozen), VAE, text encoders, schedule."""

    def __init__(self, folder: Path, kind: str, index: dict, denoiser: nn.Module, vae: nn.Module | None,
                 text: list[tuple[object, nn.Module]], scheduler_config: dict, alphas_cumprod: Tensor,
                 prediction_type: str, vae_scale: int = 8) -> None:
        self.folder, self.kind, self.index = folder, kind, index
        self.denoiser, self.vae, self.text = denoiser, vae, text
        self.scheduler_config = scheduler_config
        self.alphas_cumprod = alphas_cumprod  # float64, CPU
        self.prediction_type = prediction_type
        self.latent_channels = int(denoiser.config.in_channels)
        self.vae_scale = vae_scale  # pixels per latent (SDXL's time ids and PixArt's resolution are in pixels)
        self.sample_size = int(denoiser.config.sample_size)
        self.force_zeros_null = bool(index.get("force_zeros_for_empty_prompt", False)) and kind == "sdxl"
        self._learned_sigma = int(denoiser.config.out_channels or 0) == 2 * self.latent_channels

    # -- schedule -----------------------------------------------------------------
    def alpha_bar(self, t: Tensor) -> Tensor:
        """abar_t (float32) for integer timesteps ``t`` [B]."""
        return self.alphas_cumprod.to(torch.float32)[t.cpu().long()].to(t.device)

    def latent_shape(self, resolution: int) -> tuple[int, int, int]:
        side = resolution // self.vae_scale if resolution else self.sample_size
        return (self.latent_channels, side, side)

    # -- text ---------------------------------------------------------------------
    @property
    def max_tokens(self) -> list[int]:
        out = []
        for tok, _ in self.text:
            n = int(getattr(tok, "model_max_length", 77))
            out.append(min(n, PIXART_MAX_TOKENS) if self.kind == "pixart" else n)
        return out

    def encoder_identity(self) -> str:
        """Identity of the text path (weights + tokenizer + how it is called), for the cache key."""
        from .fingerprint import folder_fingerprint

        parts = [self.kind, "v1", str(self.max_tokens), str(self.force_zeros_null)]
        for name in ("text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2"):
            if (self.folder / name).is_dir():
                parts.append(folder_fingerprint(self.folder / name))
        import hashlib

        return hashlib.sha256("|".join(parts).encode()).hexdigest()[:20]

    def encode_prompts(self, prompts: Sequence[str], device: torch.device | str = "cpu", grad: bool = False) -> TextCond:
        """Text features; ``grad=True`` keeps the graph (a learned token embedding trains through it)."""
        with torch.set_grad_enabled(grad):
            return self._encode_prompts(prompts, device)

    def _encode_prompts(self, prompts: Sequence[str], device: torch.device | str) -> TextCond:
        if not self.text:
            raise RuntimeError("text encoders were released; embeddings must come from the cache")
        prompts = list(prompts)
        if self.kind == "sd":
            tok, enc = self.text[0]
            ids = tok(prompts, padding="max_length", max_length=self.max_tokens[0], truncation=True,
                      return_tensors="pt")
            # Same rule as diffusers' SD pipeline: a mask only when the encoder config asks for one.
            mask = ids.attention_mask.to(device) if getattr(enc.config, "use_attention_mask", False) else None
            out = enc(ids.input_ids.to(device), attention_mask=mask)
            return TextCond(out[0])
        if self.kind == "sdxl":
            feats, pooled = [], None
            for (tok, enc), n in zip(self.text, self.max_tokens):
                ids = tok(prompts, padding="max_length", max_length=n, truncation=True, return_tensors="pt")
                out = enc(ids.input_ids.to(device), output_hidden_states=True)
                feats.append(out.hidden_states[-2])
                pooled = out[0]  # the last encoder (with projection) gives the pooled text embeds
            return TextCond(torch.cat(feats, -1), pooled)
        tok, enc = self.text[0]
        ids = tok(prompts, padding="max_length", max_length=self.max_tokens[0], truncation=True,
                  add_special_tokens=True, return_tensors="pt")
        mask = ids.attention_mask.to(device)
        out = enc(ids.input_ids.to(device), attention_mask=mask)
        return TextCond(out[0], None, mask)

    def null_cond(self, device: torch.device | str = "cpu") -> TextCond:
        """The unconditional input: the empty prompt (SDXL with force_zeros: zeros, as its pipeline does)."""
        c = self.encode_prompts([""], device)
        if self.force_zeros_null:
            return TextCond(torch.zeros_like(c.embeds), torch.zeros_like(c.pooled))
        return c

    def release_text_encoders(self) -> None:
        """Free the text encoders once every embedding is cached (T5-XXL alone is ~9 GB in bf16)."""
        self.text = []

    # -- denoiser -----------------------------------------------------------------
    def raw(self, model: nn.Module, x_t: Tensor, t: Tensor, cond: TextCond) -> Tensor:
        """The denoiser's own output (eps or v; learned-sigma variance half dropped)."""
        dtype = next(model.parameters()).dtype
        x = x_t.to(dtype)
        emb = cond.embeds.to(x.device, dtype)
        b = x.shape[0]
        tt = t.to(x.device).long().expand(b) if t.dim() == 0 else t.to(x.device).long()
        if self.kind == "pixart":
            h, w = x.shape[-2] * self.vae_scale, x.shape[-1] * self.vae_scale
            if getattr(model.config, "use_additional_conditions", None) or model.config.sample_size == 128:
                res = torch.tensor([[h, w]], device=x.device, dtype=dtype).expand(b, 2)
                ar = torch.tensor([[h / w]], device=x.device, dtype=dtype).expand(b, 1)
                added = {"resolution": res, "aspect_ratio": ar}
            else:
                added = {"resolution": None, "aspect_ratio": None}
            mask = None if cond.mask is None else cond.mask.to(x.device)
            out = model(x, encoder_hidden_states=emb, timestep=tt, added_cond_kwargs=added,
                        encoder_attention_mask=mask, return_dict=False)[0]
        else:
            added = None
            if self.kind == "sdxl":
                h, w = x.shape[-2] * self.vae_scale, x.shape[-1] * self.vae_scale
                # (original size, crop top-left, target size) in pixels: no crop, native size.
                ids = torch.tensor([[h, w, 0, 0, h, w]], device=x.device, dtype=dtype).expand(b, 6)
                added = {"text_embeds": cond.pooled.to(x.device, dtype), "time_ids": ids}
            out = model(x, tt, encoder_hidden_states=emb, added_cond_kwargs=added, return_dict=False)[0]
        if self._learned_sigma:
            out = out[:, : self.latent_channels]  # the eps half; the other half is the variance
        return out.float()

    def eps(self, model: nn.Module, x_t: Tensor, t: Tensor, cond: TextCond) -> Tensor:
        """eps prediction (float32) whatever the model's parameterisation."""
        out = self.raw(model, x_t, t, cond)
        if self.prediction_type == "epsilon":
            return out
        tt = t.expand(x_t.shape[0]) if t.dim() == 0 else t
        ab = _bcast(self.alpha_bar(tt), out)
        if self.prediction_type == "v_prediction":
            # v = sqrt(ab) eps - sqrt(1-ab) x0 and x_t = sqrt(ab) x0 + sqrt(1-ab) eps
            # => eps = sqrt(1-ab) x_t + sqrt(ab) v
            return torch.sqrt(1 - ab) * x_t.float() + torch.sqrt(ab) * out
        raise BaseModelError(f"prediction_type {self.prediction_type!r} is not supported (epsilon, v_prediction)")

    # -- images -------------------------------------------------------------------
    @torch.no_grad()
    def decode(self, latents: Tensor) -> Tensor:
        if self.vae is None:
            raise RuntimeError("no VAE loaded")
        cfg = self.vae.config
        dtype = next(self.vae.parameters()).dtype
        z = latents.to(dtype) / cfg.scaling_factor
        if getattr(cfg, "shift_factor", None):
            z = z + cfg.shift_factor
        img = self.vae.decode(z, return_dict=False)[0]
        return (img.float() / 2 + 0.5).clamp(0, 1)

    @torch.no_grad()
    def encode_dist(self, images: Tensor, batch: int = 32) -> tuple[Tensor, Tensor]:
        """Images in [-1, 1] -> the VAE posterior's mean and std in the denoiser's latent units
        (the inverse of :meth:`decode`: shift subtracted, scaled), float32 on the images' device."""
        if self.vae is None:
            raise RuntimeError("no VAE loaded")
        cfg = self.vae.config
        dtype = next(self.vae.parameters()).dtype
        shift = getattr(cfg, "shift_factor", None) or 0.0
        means, stds = [], []
        for i in range(0, images.shape[0], batch):
            dist = self.vae.encode(images[i: i + batch].to(dtype), return_dict=False)[0]
            means.append((dist.mean.float() - shift) * cfg.scaling_factor)
            stds.append(dist.std.float() * cfg.scaling_factor)
        return torch.cat(means), torch.cat(stds)

    def multistep_scheduler(self, steps: int):
        """A DDIM scheduler on the model's schedule, fed eps (so v-models work too)."""
        from diffusers import DDIMScheduler

        cfg = {k: v for k, v in self.scheduler_config.items() if not k.startswith("_")}
        cfg["prediction_type"] = "epsilon"
        sched = DDIMScheduler.from_config(cfg)
        sched.set_timesteps(steps)
        return sched

    def enable_gradient_checkpointing(self, model: nn.Module) -> None:
        model.enable_gradient_checkpointing()

    def to(self, device: torch.device | str) -> Backbone:
        self.denoiser.to(device)
        if self.vae is not None:
            self.vae.to(device)
        for _, enc in self.text:
            enc.to(device)
        return self


def _dtype(name: str) -> torch.dtype:
    return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[name]


def _quiet():
    import diffusers
    import transformers

    diffusers.utils.logging.set_verbosity_error()
    transformers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()


def load_tokenizer(folder: str | Path, index: dict, name: str = "tokenizer"):
    """One tokenizer of a checked diffusers folder (the class its model_index.json names), offline."""
    import transformers

    cls = getattr(transformers, (index.get(name) or [None, "AutoTokenizer"])[1] or "AutoTokenizer")
    return cls.from_pretrained(Path(folder) / name, local_files_only=True)


def load_backbone(folder: str | Path, backbone: str = "auto", dtype: str = "fp32", text: bool = True,
                  vae: bool = True) -> Backbone:
    """Load a checked diffusers folder (offline; nothing is downloaded)."""
    import diffusers
    import transformers
    from diffusers import DDPMScheduler

    _quiet()
    folder = Path(folder)
    kind, index = inspect_folder(folder, backbone)
    td = _dtype(dtype)
    name = "transformer" if kind == "pixart" else "unet"
    den_cls = getattr(diffusers, index.get(name, [None, None])[1] or
                      ("PixArtTransformer2DModel" if kind == "pixart" else "UNet2DConditionModel"))
    denoiser = den_cls.from_pretrained(folder, subfolder=name, torch_dtype=td, local_files_only=True)
    denoiser.requires_grad_(False).eval()
    vae_m = None
    if vae:
        vae_m = diffusers.AutoencoderKL.from_pretrained(folder, subfolder="vae", torch_dtype=td, local_files_only=True)
        vae_m.requires_grad_(False).eval()
    pairs = []
    if text:
        names = [("tokenizer", "text_encoder")] + ([("tokenizer_2", "text_encoder_2")] if kind == "sdxl" else [])
        default_enc = {"sd": ["CLIPTextModel"], "sdxl": ["CLIPTextModel", "CLIPTextModelWithProjection"],
                       "pixart": ["T5EncoderModel"]}[kind]
        for (tn, en), dflt in zip(names, default_enc):
            enc_cls = getattr(transformers, (index.get(en) or [None, dflt])[1] or dflt)
            tok = load_tokenizer(folder, index, tn)
            enc = enc_cls.from_pretrained(folder / en, torch_dtype=td, local_files_only=True)
            enc.requires_grad_(False).eval()
            pairs.append((tok, enc))
    sched_cfg = _read_json(folder / "scheduler" / "scheduler_config.json", "scheduler")
    sched = DDPMScheduler.from_config({k: v for k, v in sched_cfg.items() if not k.startswith("_")})
    ac = sched.alphas_cumprod.to(torch.float64)
    pred = sched_cfg.get("prediction_type", "epsilon")
    if pred not in ("epsilon", "v_prediction"):
        raise BaseModelError(f"{folder}/scheduler: prediction_type {pred!r} is not supported (epsilon, v_prediction)")
    # From the config file, so it is right even when the VAE itself is not loaded.
    vae_scale = 2 ** (len(_read_json(folder / "vae" / "config.json", "vae")["block_out_channels"]) - 1)
    return Backbone(folder, kind, index, denoiser, vae_m, pairs, sched_cfg, ac, pred, vae_scale)


def check_one_step_alpha_bar(alpha_bar: float, where: str) -> None:
    """The one-step formula divides by sqrt(abar_T): a zero-terminal-SNR schedule cannot use it."""
    if not (alpha_bar > 1e-8 and math.isfinite(alpha_bar)):
        raise BaseModelError(
            f"{where}: abar_T = {alpha_bar:g}; the one-step x0 = (z - sqrt(1-abar) eps)/sqrt(abar) needs abar_T > 0 "
            "(zero-terminal-SNR schedules are not supported; use vsd.alpha_bar=official or vsd.timestep < 999)"
        )
