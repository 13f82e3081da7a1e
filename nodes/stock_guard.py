"""Whole-file validation for ``.lorad`` files that arrive through ComfyUI's stock Load LoRA.

ComfyUI's ``comfy.lora.load_lora(lora, key_map)`` asks every registered weight adapter,
key by key, whether it claims ``{key}.*`` tensors of the loaded dict.  Left alone, a bad
file would be applied in part (the layers that happen to fit) and its errors only logged per
layer.  Here the first such question for a dict (one ``load_lora`` call) runs the checks
Load LoRaD runs, once, before any adapter exists:

1. find the file the tensors came from, for its metadata, which the stock loader drops: the
   ``lora_path`` LoraLoader holds next to the dict, else the file in ``models/loras`` or
   ``models/lorad`` whose safetensors header lists exactly these tensors;
2. ``lorad.io.file_from_tensors``: format version, architecture id, pairing, complete A/B
   pairs, ranks, dtypes, key spelling, finiteness, and the ModelSpec hash over the tensors;
3. ``fit.plan`` against the MODEL/CLIP being patched: architecture, every key resolves, every
   shape fits (the same plan Load LoRaD uses).

A failure logs one error naming the file and the key, and the adapter then claims nothing
from that dict: nothing of the file is applied, and no weight was touched.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import folder_paths
import torch
from torch import Tensor

from ..lorad import io as lorad_io
from ..lorad.metadata import K_HASH
from .fit import plan
from .lorad_file import LoRaDReadError, info_of
from .resolve import LoRaDMatchError

log = logging.getLogger("wadi")

MARK = ".lorad_"  # every LoRaD tensor name contains it (<key>.lorad_A / _B / _theta)


@dataclass(frozen=True)
class Verdict:
    ok: bool
    path: str | None = None
    reason: str = ""
    # Key prefixes of the refused file's other (non-LoRaD) tensors: ComfyUI's own LoRA adapters
    # would apply those; the LoRaD adapter, asked last, overrides them with a no-op.
    others: frozenset[str] = frozenset()


# safetensors' dtype names, so a file with a forbidden dtype is still found (and refused naming it).
_ST_DTYPES = {torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
              torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
              torch.bool: "BOOL"}
_LAST: dict = {"keys": None, "lora_id": None, "verdict": None}


def verdict(lora: Mapping[str, Tensor], loaded_keys: set) -> Verdict | None:
    """The check result for this ``load_lora`` call; None when the dict holds no LoRaD tensor.

    ``loaded_keys`` is the set ComfyUI creates per ``load_lora`` call and passes to every
    adapter: it identifies the call, so the file is checked once, not once per key.
    """
    if _LAST["keys"] is loaded_keys and _LAST["lora_id"] == id(lora):
        return _LAST["verdict"]
    result = _check(lora) if any(MARK in k for k in lora) else None
    _LAST.update(keys=loaded_keys, lora_id=id(lora), verdict=result)
    return result


def _check(lora: Mapping[str, Tensor]) -> Verdict:
    path = None
    try:
        named = _loader_path(lora)
        path, header = (named, lorad_io.read_header(named)) if named else find_source(lora, _candidates())
        info = info_of(lorad_io.file_from_tensors(path, lora, header))
        models = _models_being_patched()
        if models is None:
            log.warning("LoRaD: %s: could not see the model being patched; the key and shape check runs per "
                        "layer when ComfyUI patches (use Load LoRaD for the all-or-nothing check)", path)
        elif models[0] is not None:
            plan(info, *models)
    except (lorad_io.LoRaDFileError, LoRaDReadError, LoRaDMatchError, ValueError) as e:
        log.error("LoRaD (Load LoRA): %s. Nothing of this file was applied.", e)
        return Verdict(False, path, str(e), _prefixes(k for k in lora if MARK not in k))
    return Verdict(True, path)


def _prefixes(keys: Iterable[str]) -> frozenset[str]:
    out = set()
    for k in keys:
        parts = k.split(".")
        out.update(".".join(parts[:i]) for i in range(1, len(parts)))
    return frozenset(out)


def _candidates() -> list[str]:
    """Files the dict may have come from: ``*.lorad.safetensors`` first, then other ``.safetensors``."""
    found: list[str] = []
    for folder in ("lorad", "loras"):
        if folder not in folder_paths.folder_names_and_paths:
            continue
        for name in folder_paths.get_filename_list(folder):
            if name.endswith(".safetensors"):
                full = folder_paths.get_full_path(folder, name)
                if full and full not in found:
                    found.append(full)
    return sorted(found, key=lambda p: not p.endswith(".lorad.safetensors"))


def find_source(lora: Mapping[str, Tensor], candidates: Iterable[str]) -> tuple[str, lorad_io.Header]:
    """The file these tensors were read from: its header lists exactly them (names, dtypes, shapes).

    Several files can share a header (copies, edits): then the one whose data hash is the
    tensors' own wins (from its metadata, else read from disk), else one without a hash.
    """
    want = {n: (_ST_DTYPES.get(t.dtype, str(t.dtype)), list(t.shape)) for n, t in lora.items()}
    nbytes = sum(t.numel() * t.element_size() for t in lora.values())
    matches: list[tuple[str, lorad_io.Header]] = []
    for path in candidates:
        try:
            if os.path.getsize(path) < nbytes + 8:
                continue
            header = lorad_io.read_header(path)
        except (OSError, lorad_io.LoRaDFileError):
            continue
        if header.tensors == want:
            matches.append((path, header))
    if len(matches) > 1:
        own = lorad_io.tensors_sha256(lora, matches[0][1])

        def stored(header: lorad_io.Header) -> str | None:
            return header.metadata.get(K_HASH)

        by_meta = [m for m in matches if (stored(m[1]) or "").lower() == own]
        by_disk = [] if by_meta else [m for m in matches if lorad_io.data_sha256(m[0]) == own]
        matches = by_meta or by_disk or [m for m in matches if stored(m[1]) is None] or matches
    if matches:
        return matches[0]
    example = next((k for k in lora if MARK in k), "")
    raise lorad_io.LoRaDFileError(
        None, example, "LoRaD tensors whose file is not in models/loras or models/lorad, so its metadata "
        "(format version, architecture) cannot be checked", "the file in a LoRA folder, or Load LoRaD")


def _caller_frames(depth: int = 10):
    frame = sys._getframe(2)
    for _ in range(depth):
        if frame is None:
            return
        yield frame
        frame = frame.f_back


def _loader_path(lora: Mapping[str, Tensor]) -> str | None:
    """The file a LoraLoader-style node read ``lora`` from (its ``lora_path`` local), if one is on the stack.

    ComfyUI's LoraLoader (and nodes built on it) hold the path and the dict side by side;
    that names the file exactly, where matching headers could not tell copies apart.
    """
    for frame in _caller_frames():
        loc = frame.f_locals
        path = loc.get("lora_path")
        if loc.get("lora") is lora and isinstance(path, str) and os.path.isfile(path):
            return path
    return None


def _models_being_patched() -> tuple | None:
    """``(model, clip)`` of the ``comfy.sd.load_lora_for_models`` call this check runs inside, or None.

    The stock path passes adapters no model, so the caller's frame is the only place the
    MODEL/CLIP are visible before any patch exists.  Read-only, and a ComfyUI that calls
    ``load_lora`` some other way falls back to the per-layer checks.
    """
    for frame in _caller_frames():
        if frame.f_code.co_name == "load_lora_for_models" and "model" in frame.f_locals:
            return frame.f_locals.get("model"), frame.f_locals.get("clip")
    return None
