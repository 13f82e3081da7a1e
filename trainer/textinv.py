"""Learned token embeddings: new tokens in a CLIP text encoder, the textual-inversion file format,
and ReVersion's relation-steering loss and timestep sampling (arXiv 2303.13495).

* :class:`AddedTokens` extends an encoder's token-embedding table with new rows without
  touching the original table: the frozen table answers ids below its size, the new rows
  (one ``nn.Parameter``) answer the ids the tokenizer gave the new tokens.  So "only that
  row trains" holds by construction, with no restore-after-step trick.
* The file format is the one ComfyUI's ``embedding:name`` and A1111 read: a safetensors file
  whose tensor ``emb_params`` has shape ``(n_vectors, width)`` (SD1.x: 768).
* :func:`steer_loss`: InfoNCE with several positives.  With ``r`` the relation embedding,
  ``P`` preposition embeddings and ``N`` the caption's other (object) word embeddings, all
  L2-normalised, ``L = -log(sum_P exp(r.p/tau) / sum_{P and N} exp(r.k/tau))``: it pulls
  ``<R>`` toward prepositions and away from object appearance words.
* :func:`importance_timesteps`: ReVersion's relation-focal sampling, ``p(t) ∝ 1 - a cos(pi t / T)``
  (more weight on large t, where layout and relations are decided, less on texture-level t).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["EMBED_KEY", "EmbeddingFileError", "AddedTokens", "token_names", "add_tokens", "word_vectors",
           "steer_loss", "importance_weights", "importance_timesteps", "save_embedding", "load_embedding",
           "install_embedding", "expand_embedding_refs", "PREPOSITIONS", "STOP_WORDS"]

EMBED_KEY = "emb_params"  # the tensor name A1111 writes and ComfyUI's load_embed falls back to

# Basis prepositions for the steering positives (a word is used only if it is one token).
PREPOSITIONS: tuple[str, ...] = (
    "above", "across", "after", "against", "along", "among", "around", "at", "behind", "below", "beneath",
    "beside", "between", "beyond", "by", "down", "for", "from", "in", "inside", "into", "near", "next", "of",
    "off", "on", "onto", "opposite", "out", "outside", "over", "past", "through", "to", "toward", "under",
    "underneath", "up", "upon", "with", "within", "without", "left", "right", "top", "bottom",
)
# Words that carry no object appearance (never used as steering negatives).
STOP_WORDS: tuple[str, ...] = (
    "a", "an", "the", "and", "or", "is", "are", "it", "its", "this", "that", "picture", "image", "photo",
    "background", "some", "one", "two",
)


class EmbeddingFileError(ValueError):
    """An embedding file is missing or holds no usable tensor; the message names it."""


class AddedTokens(nn.Module):
    """An embedding table plus ``n`` new rows (ids ``base.num_embeddings ...``), only the new rows trainable."""

    def __init__(self, base: nn.Module, vectors: Tensor, trainable: bool = False) -> None:
        super().__init__()
        self.base = base
        self.num_base = int(base.num_embeddings)
        self.vectors = nn.Parameter(vectors.detach().clone().float(), requires_grad=trainable)

    @property
    def num_embeddings(self) -> int:
        return self.num_base + self.vectors.shape[0]

    @property
    def weight(self) -> Tensor:
        """The whole table (read-only view for code that inspects ``get_input_embeddings().weight``)."""
        w = self.base.weight
        return torch.cat([w.detach(), self.vectors.detach().to(w.dtype)])

    def forward(self, ids: Tensor) -> Tensor:
        new = ids >= self.num_base
        out = self.base(ids.masked_fill(new, 0))
        if not bool(new.any()):
            return out
        extra = self.vectors[(ids - self.num_base).clamp(min=0)].to(out.dtype)
        return torch.where(new.unsqueeze(-1), extra, out)


def token_names(placeholder: str, n: int) -> list[str]:
    """The tokenizer tokens standing for an ``n``-vector embedding: ``<R>``, ``<R>_1``, ..."""
    return [placeholder] + [f"{placeholder}_{i}" for i in range(1, n)]


def add_tokens(tokenizer, encoder: nn.Module, names: Sequence[str], vectors: Tensor,
               trainable: bool = False) -> AddedTokens:
    """Add ``names`` to the tokenizer and their ``vectors`` (n, width) to the encoder's embedding table."""
    names = list(names)
    if vectors.ndim != 2 or vectors.shape[0] != len(names):
        raise ValueError(f"need one vector per token: {len(names)} names, vectors of shape {tuple(vectors.shape)}")
    table = encoder.get_input_embeddings()
    width = int(table.weight.shape[1])
    if vectors.shape[1] != width:
        raise EmbeddingFileError(f"embedding width {vectors.shape[1]} does not fit this text encoder (width {width})")
    taken = [n for n in names if n in tokenizer.get_vocab()]
    if taken:
        raise ValueError(f"token(s) {taken} already exist in the tokenizer; choose another placeholder")
    if len(tokenizer) != table.num_embeddings:
        raise ValueError(f"tokenizer has {len(tokenizer)} tokens but the embedding table {table.num_embeddings} rows; "
                         "new token ids would not line up")
    tokenizer.add_tokens(names)
    ids = tokenizer.convert_tokens_to_ids(names)
    if ids != list(range(table.num_embeddings, table.num_embeddings + len(names))):
        raise ValueError(f"tokenizer gave ids {ids} to {names}; expected the next free ids")
    module = AddedTokens(table, vectors.to(table.weight.device), trainable)
    encoder.set_input_embeddings(module)
    return module


def word_vectors(tokenizer, encoder: nn.Module, words: Sequence[str]) -> tuple[Tensor, list[str]]:
    """Input embeddings of the words that are ONE token for this tokenizer (others are skipped)."""
    table = encoder.get_input_embeddings()
    kept, ids = [], []
    for w in words:
        t = tokenizer.encode(w, add_special_tokens=False)
        if len(t) == 1:
            kept.append(w)
            ids.append(t[0])
    if not ids:
        return torch.zeros(0, int(table.weight.shape[1])), kept
    with torch.no_grad():
        return table(torch.tensor(ids, device=table.weight.device)).float(), kept


def steer_loss(r: Tensor, positives: Tensor, negatives: Tensor, temperature: float = 0.07) -> Tensor:
    """Multi-positive InfoNCE of ``r`` (width,) against ``positives`` (P, width) and ``negatives`` (N, width)."""
    if positives.shape[0] == 0:
        raise ValueError("steer_loss needs at least one positive")
    keys = F.normalize(torch.cat([positives, negatives]).detach().float(), dim=-1)
    logits = keys @ F.normalize(r.float().reshape(-1), dim=0) / temperature
    return torch.logsumexp(logits, 0) - torch.logsumexp(logits[: positives.shape[0]], 0)


def importance_weights(num_timesteps: int = 1000, alpha: float = 0.5) -> Tensor:
    """ReVersion's sampling distribution over t = 0..T-1: ``(1 - alpha cos(pi t / T)) / Z``."""
    t = torch.arange(num_timesteps, dtype=torch.float64)
    w = 1.0 - alpha * torch.cos(math.pi * t / num_timesteps)
    return w / w.sum()


def importance_timesteps(gen: torch.Generator, n: int, num_timesteps: int = 1000, alpha: float = 0.5) -> Tensor:
    return torch.multinomial(importance_weights(num_timesteps, alpha).float(), n, replacement=True, generator=gen)


# -- files -----------------------------------------------------------------------------------------
def save_embedding(path: str | Path, vectors: Tensor, metadata: dict[str, str] | None = None,
                   force: bool = False) -> Path:
    """Write ``vectors`` (n, width) as ``{"emb_params": ...}`` safetensors, atomically."""
    from safetensors.torch import save_file

    from ..lorad.fsutil import atomic_save

    path = Path(path)
    if path.exists() and not force:
        raise FileExistsError(f"{path} exists (use --output.force true)")
    if vectors.ndim != 2:
        raise ValueError(f"embedding vectors must be (n_vectors, width), got {tuple(vectors.shape)}")
    tensors = {EMBED_KEY: vectors.detach().float().cpu().contiguous()}
    atomic_save(path, lambda tmp: save_file(tensors, str(tmp), metadata=dict(metadata or {})))
    return path


def load_embedding(path: str | Path, width: int | None = None) -> Tensor:
    """The (n, width) vectors of a textual-inversion file, read the way ComfyUI reads them:
    ``emb_params`` / ``clip_l`` / ``string_to_param.*`` / the only tensor; ``.pt`` files with
    ``string_to_param`` too.  ``width`` (the text encoder's) is checked when given."""
    path = Path(path)
    if not path.is_file():
        raise EmbeddingFileError(f"embedding {path} does not exist")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            data = load_file(str(path))
        else:
            data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torn or foreign file: say which
        raise EmbeddingFileError(f"{path}: cannot read the embedding ({e})") from None
    if isinstance(data, dict) and isinstance(data.get("string_to_param"), dict):
        data = {f"string_to_param.{k}": v for k, v in data["string_to_param"].items()}
    tensors = {k: v for k, v in data.items() if isinstance(v, Tensor)} if isinstance(data, dict) else {}
    pick = next((tensors[k] for k in (EMBED_KEY, "clip_l") if k in tensors), None)
    if pick is None:
        stp = [v for k, v in sorted(tensors.items()) if k.startswith("string_to_param.")]
        pick = stp[0] if stp else (next(iter(tensors.values())) if len(tensors) == 1 else None)
    if pick is None:
        raise EmbeddingFileError(f"{path}: no embedding tensor (expected '{EMBED_KEY}', 'clip_l', string_to_param or "
                                 f"a single tensor; found {sorted(tensors)})")
    vec = pick.float().reshape(-1, pick.shape[-1])
    if width is not None and vec.shape[1] != width:
        raise EmbeddingFileError(f"{path}: vectors of width {vec.shape[1]}, this text encoder needs {width}")
    return vec


def install_embedding(tokenizer, encoder: nn.Module, path: str | Path, name: str | None = None) -> str:
    """Load an embedding file into a tokenizer + text encoder; return the text that stands for it.

    ``name`` defaults to the file's stem; prompts may then say ``embedding:<name>`` (ComfyUI's
    syntax, see :func:`expand_embedding_refs`) or the returned token text directly.
    """
    width = int(encoder.get_input_embeddings().weight.shape[1])
    vec = load_embedding(path, width)
    name = name or Path(path).name.split(".")[0]
    names = token_names(f"<{name}>", vec.shape[0])
    add_tokens(tokenizer, encoder, names, vec)
    return " ".join(names)


def expand_embedding_refs(prompt: str, installed: dict[str, str]) -> str:
    """Replace ComfyUI-style ``embedding:name`` (optionally with a suffix) by the installed tokens."""
    def sub(m: re.Match) -> str:
        key = m.group(1).split(".")[0]
        if key not in installed:
            raise EmbeddingFileError(f"prompt refers to embedding:{m.group(1)} but only {sorted(installed)} are loaded")
        return installed[key]

    return re.sub(r"embedding:([A-Za-z0-9_.\-]+)", sub, prompt)
