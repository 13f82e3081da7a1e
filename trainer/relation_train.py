"""The relation-inversion run (ReVersion, arXiv 2303.13495) on a frozen SD-style base model.

Only the new token's vectors train (:class:`.textinv.AddedTokens`); UNet, VAE and the rest
of the text encoder are frozen.  Each step:

* denoising: exemplar latents ``x0`` (a VAE posterior sample), ``t`` by relation-focal
  importance sampling, ``MSE(eps(x_t, t, text(caption with <R>)), n)`` - the gradient reaches
  ``<R>`` through the text encoder;
* steering: :func:`.textinv.steer_loss` of each ``<R>`` vector against ``steer.num_positives``
  prepositions drawn per sample (positives) and the batch's caption words that are neither
  stop words nor prepositions (negatives: the objects' appearance words).

The result is a textual-inversion file (``emb_params``) for ComfyUI's ``embedding:<name>`` and
for ``wadi sample --embedding`` with a one-step WaDi student.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..lorad import inject
from .backbones import BaseModelError, inspect_folder, load_backbone, load_tokenizer
from .config import ConfigError
from .finetune import FineTune
from .imagefolder import ImageFolderError, load_images, scan_folder
from .relation import DEFAULT_NAME, NOT_HASHED, RelationConfig, from_dict, validate
from .sampling import one_step, save_grid, seeded_noise, teacher_multistep
from .textinv import (
    PREPOSITIONS,
    STOP_WORDS,
    add_tokens,
    importance_timesteps,
    save_embedding,
    steer_loss,
    token_names,
    word_vectors,
)
from .vsd import noisy

__all__ = ["RelationTrainer"]


class RelationTrainer(FineTune):
    command = "relation"

    def __init__(self, cfg: RelationConfig, log=print, progress: bool = True) -> None:
        super().__init__(cfg, validate, from_dict, NOT_HASHED, log, progress, extra_files=(cfg.output.preview_student,))

    def check_inputs(self) -> None:
        c = self.cfg
        if self.kind != "sd":
            raise BaseModelError(f"model.base {c.model.base}: relation inversion supports SD1.x/2.x bases (one CLIP "
                                 f"text encoder, ComfyUI's embedding format); this base is {self.kind}")
        d, ph = c.data, c.token.placeholder.strip()
        tok = load_tokenizer(c.model.base, inspect_folder(c.model.base, self.kind)[1])
        n = len(tok.encode(c.token.initializer.strip(), add_special_tokens=False))
        if n != 1:
            raise ConfigError(f"token.initializer: {c.token.initializer!r} is {n} tokens for this tokenizer; "
                              "choose a one-token word")
        if ph in tok.get_vocab() or len(tok.encode(ph, add_special_tokens=False)) == 1:
            raise ConfigError(f"token.placeholder: {ph!r} is already a token of this tokenizer (a word the model "
                              "knows); choose a new one such as <R>")
        self.examples = scan_folder(d.images, d.captions, "", d.jsonl_key)
        for e in self.examples:
            if ph not in e.caption:
                raise ImageFolderError(f"{e.path}: caption {e.caption!r} does not contain the placeholder {ph!r} "
                                       "(token.placeholder); write it where the relation goes, e.g. 'a cat <R> a wall'")

    # -- set-up ---------------------------------------------------------------------------------
    def build(self) -> dict[str, nn.Parameter]:
        c, dev = self.cfg, self.device
        self.bb = bb = load_backbone(c.model.base, self.kind, self._dtype()).to(dev)
        tok, enc = bb.text[0]
        enc.requires_grad_(False)
        init, _ = word_vectors(tok, enc, [c.token.initializer.strip()])  # one token: checked in check_inputs
        ph = c.token.placeholder.strip()
        self.names = token_names(ph, c.token.num_vectors)
        self.tokens = add_tokens(tok, enc, self.names, init.repeat(c.token.num_vectors, 1), trainable=True)
        self.texts = [e.caption.replace(ph, " ".join(self.names)) for e in self.examples]
        self.basis, self.basis_words = word_vectors(tok, enc, c.steer.prepositions or PREPOSITIONS)
        if not self.basis_words:
            raise ConfigError("steer.prepositions: none of the words is a single token for this tokenizer")
        skip = set(self.names) | set(STOP_WORDS) | set(self.basis_words)
        skip_ids = {i for w in skip for i in tok.encode(w, add_special_tokens=False)} | {
            tok.bos_token_id, tok.eos_token_id, tok.pad_token_id}
        self.neg_ids = [torch.tensor(sorted({i for i in tok.encode(t, add_special_tokens=False)} - skip_ids),
                                     dtype=torch.long) for t in self.texts]
        self.check_stop()
        res = c.data.resolution or bb.sample_size * bb.vae_scale
        self.latent = bb.latent_shape(res)
        images = load_images([e.path for e in self.examples], res, c.data.center_crop).to(dev)
        self.mean, self.std = bb.encode_dist(images)
        self.null = bb.null_cond(dev).float()
        self.sample_prompts = list(c.output.sample_prompts) or list(dict.fromkeys(
            e.caption for e in self.examples))[: c.output.num_samples]
        from .cmd_sample import load_student, one_step_params

        self.student_file = load_student(bb, c.output.preview_student) if c.output.preview_student else None
        if self.student_file is not None:
            inject.set_active(bb.denoiser, None)
        self.T, self.ab_T = one_step_params(self.student_file, bb, None, None)
        return {"token.vectors": self.tokens.vectors}

    # -- one step -------------------------------------------------------------------------------
    def draw(self, gen: torch.Generator, n: int) -> dict[str, Tensor]:
        c = self.cfg
        shape = (n, *self.latent)
        t = (importance_timesteps(gen, n, len(self.bb.alphas_cumprod), c.denoise.alpha) if c.denoise.importance_sampling
             else torch.randint(0, len(self.bb.alphas_cumprod), (n,), generator=gen))
        return {"idx": torch.randint(0, len(self.examples), (n,), generator=gen),
                "z": torch.randn(shape, generator=gen), "noise": torch.randn(shape, generator=gen), "t": t,
                "pos": torch.randint(0, len(self.basis_words), (n, c.steer.num_positives), generator=gen)}

    def loss(self, b: dict[str, Tensor]) -> tuple[Tensor, dict[str, float]]:
        c, bb, dev = self.cfg, self.bb, self.device
        idx = b["idx"]
        out: dict[str, float] = {}
        loss = torch.zeros((), device=dev)
        if c.denoise.weight > 0:
            cond = bb.encode_prompts([self.texts[i] for i in idx.tolist()], dev, grad=True).float()
            x0 = self.mean[idx.to(dev)] + self.std[idx.to(dev)] * b["z"].to(dev)
            t, noise = b["t"].to(dev), b["noise"].to(dev)
            x_t = noisy(x0, noise, bb.alpha_bar(t))
            l_den = F.mse_loss(bb.eps(bb.denoiser, x_t, t, cond), noise)
            loss = loss + c.denoise.weight * l_den
            out["denoise"] = float(l_den.detach())
        if c.steer.weight > 0:
            positives = self.basis[b["pos"].flatten()].to(dev)
            ids = torch.unique(torch.cat([self.neg_ids[i] for i in idx.tolist()]))
            negatives = self.tokens.base(ids.to(dev)).float() if ids.numel() else positives[:0]
            vec = self.tokens.vectors
            l_steer = torch.stack([steer_loss(vec[j], positives, negatives, c.steer.temperature)
                                   for j in range(vec.shape[0])]).mean()
            loss = loss + c.steer.weight * l_steer
            out["steer"] = float(l_steer.detach())
        return loss, out

    # -- outputs ----------------------------------------------------------------------------------
    @torch.no_grad()
    def sample(self, path: Path) -> Path:
        """Grid: the initializer word in place of <R> vs the learned token (DDIM + CFG; + student 1-step)."""
        c, bb, den, o = self.cfg, self.bb, self.bb.denoiser, self.cfg.output
        ph = c.token.placeholder.strip()
        learned = [p.replace(ph, " ".join(self.names)) for p in self.sample_prompts]
        plain = [p.replace(ph, c.token.initializer.strip()) for p in self.sample_prompts]
        noise = seeded_noise(range(len(learned)), self.latent).to(self.device)
        rows, labels = [], []
        with self.ema_applied():
            conds = [(f"'{c.token.initializer}'", bb.encode_prompts(plain, self.device).float()),
                     (ph, bb.encode_prompts(learned, self.device).float())]
        for lab, cond in conds:
            rows.append(bb.decode(teacher_multistep(bb, den, cond, self.null, noise, o.sample_steps,
                                                    o.sample_guidance)))
            labels.append(f"{lab} {o.sample_steps}-step")
        if self.student_file is not None:
            with inject.active_adapters(den, "student"):
                rows.append(bb.decode(one_step(bb, den, conds[1][1], noise, self.ab_T, self.T)))
            labels.append(f"{ph} student 1-step")
        return save_grid(rows, labels, path, captions=self.sample_prompts)

    def export(self) -> dict[str, Path]:
        import json

        c = self.cfg
        path = self.out / f"{c.output.name or DEFAULT_NAME}.safetensors"
        meta = {"wadi.kind": "relation-inversion (ReVersion)", "wadi.placeholder": c.token.placeholder.strip(),
                "wadi.initializer": c.token.initializer.strip(), "wadi.steps": str(self.step),
                "wadi.base_model": Path(c.model.base).name, "wadi.base_fingerprint": self.base_fp,
                "wadi.config_hash": self.cfg_hash, "wadi.exemplars": str(len(self.examples)),
                "wadi.steer": json.dumps({"weight": c.steer.weight, "temperature": c.steer.temperature,
                                          "num_positives": c.steer.num_positives}),
                "wadi.usage": f"ComfyUI: put the file in models/embeddings and write embedding:{path.stem} where "
                              f"{c.token.placeholder.strip()} went; wadi sample --embedding {path.name}"}
        with self.ema_applied():
            vec = self.tokens.vectors.detach().clone()
        return {"embedding": save_embedding(path, vec, meta, force=True)}

    def start_fields(self) -> dict:
        return {"images": len(self.examples), "placeholder": self.cfg.token.placeholder,
                "positives_basis": len(self.basis_words)}
