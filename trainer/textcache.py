"""Text-embedding cache: encode each prompt once, keep it on disk as safetensors, reuse it.

Entries are keyed by ``sha256(prompt)`` inside one file per *encoder identity*
(text-encoder weights + tokenizer + how they are called, see
``Backbone.encoder_identity``), so a different base or encoding rule never reads
stale features.  Once every prompt of a run is cached the text encoders can be
released; the training loop only indexes a tensor.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import Tensor

from ..lorad.fsutil import atomic_save
from .backbones import TextCond


def prompt_key(prompt: str) -> str:
    return hashlib.sha256(prompt.encode("utf-8")).hexdigest()[:32]


def cache_file(cache_dir: Path, identity: str) -> Path:
    return Path(cache_dir) / f"text-{identity}.safetensors"


def _load(path: Path) -> dict[str, Tensor]:
    if not path.is_file():
        return {}
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except Exception as e:  # a torn or foreign file: rebuild rather than fail the run
        print(f"note: text cache {path} is unreadable ({e}); re-encoding")
        return {}


def encode_cached(
    prompts: Sequence[str],
    encode: Callable[[list[str]], TextCond],
    cache_dir: Path | None,
    identity: str,
    batch_size: int = 64,
    progress: bool = True,
) -> tuple[TextCond, int]:
    """Features for ``prompts`` (stacked in order) and how many had to be encoded now.

    Features are stored in the dtype the encoder produced (so cached and freshly encoded
    features are identical) and returned as float32; a prompt's entry
    is ``{key}.embeds`` (+ ``.pooled``, ``.mask``).  With ``cache_dir=None`` nothing
    is read or written.
    """
    from tqdm.auto import tqdm

    path = cache_file(cache_dir, identity) if cache_dir is not None else None
    store = _load(path) if path is not None else {}
    keys = [prompt_key(p) for p in prompts]
    todo = list(dict.fromkeys(p for p, k in zip(prompts, keys) if f"{k}.embeds" not in store))
    if todo:
        bar = tqdm(total=len(todo), desc="encode prompts", unit="prompt", disable=not progress)
        for i in range(0, len(todo), batch_size):
            chunk = todo[i: i + batch_size]
            cond = encode(chunk)
            for j, p in enumerate(chunk):
                k = prompt_key(p)
                store[f"{k}.embeds"] = cond.embeds[j].contiguous().cpu()
                if cond.pooled is not None:
                    store[f"{k}.pooled"] = cond.pooled[j].contiguous().cpu()
                if cond.mask is not None:
                    store[f"{k}.mask"] = cond.mask[j].to(torch.int8).contiguous().cpu()
            bar.update(len(chunk))
        bar.close()
        if path is not None:
            from safetensors.torch import save_file

            atomic_save(path, lambda tmp: save_file(store, str(tmp), metadata={"identity": identity}))
    embeds = torch.stack([store[f"{k}.embeds"] for k in keys]).float()
    pooled = torch.stack([store[f"{k}.pooled"] for k in keys]).float() if f"{keys[0]}.pooled" in store else None
    mask = torch.stack([store[f"{k}.mask"] for k in keys]).long() if f"{keys[0]}.mask" in store else None
    return TextCond(embeds, pooled, mask), len(todo)
