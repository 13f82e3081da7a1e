"""Model state dicts on disk: read any common layout, write atomically, merge angles in.

Reading (:func:`load_state_dict`) accepts

* a ``.safetensors`` file (diffusers keys, or ldm keys with or without the
  ``model.diffusion_model.`` prefix of a full checkpoint),
* a torch pickle (``.bin``/``.pt``/``.pth``/``.ckpt``), loaded with
  ``weights_only=True`` (never executes pickled code); a top-level ``state_dict``
  entry (ldm checkpoints) is unwrapped,
* a diffusers model folder (``config.json`` + ``diffusion_pytorch_model*.safetensors``,
  sharded or not), or a pipeline folder (``model_index.json``) whose ``unet/``
  (else ``transformer/``) component is read.

Writing is atomic everywhere: a temp file (or temp folder) next to the target,
then ``os.replace``; an existing target is only replaced with ``force``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from . import functional
from .fsutil import atomic_dir, atomic_save
from .layer_spec import LayerSpec

__all__ = [
    "CheckpointError",
    "Checkpoint",
    "load_state_dict",
    "save_safetensors",
    "write_diffusers_folder",
    "merge_state",
    "layer_angles",
    "DIFFUSERS_WEIGHTS",
]

DIFFUSERS_WEIGHTS = "diffusion_pytorch_model.safetensors"
_PICKLE_SUFFIXES = {".bin", ".pt", ".pth", ".ckpt"}


class CheckpointError(ValueError):
    """A checkpoint path or its contents is not usable (the message names the file/key)."""


@dataclass
class Checkpoint:
    state: dict[str, Tensor]
    path: Path  # what was read (the weights file, or the model folder)
    config: dict | None = None  # diffusers config.json of a folder


def _tensors_only(obj: object, path: Path) -> dict[str, Tensor]:
    if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path}: expected a dict of tensors, got {type(obj).__name__}")
    bad = [k for k, v in obj.items() if not isinstance(v, Tensor)]
    if bad:
        raise CheckpointError(f"{path}: entries are not tensors: {bad[:5]}{' ...' if len(bad) > 5 else ''}")
    return dict(obj)


def _load_file(path: Path) -> dict[str, Tensor]:
    if path.name.endswith(".safetensors"):
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError) as e:
            raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from e
    if path.suffix in _PICKLE_SUFFIXES:
        try:
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - torch raises many types for bad pickles
            raise CheckpointError(f"{path}: cannot load with weights_only=True ({e})") from e
        return _tensors_only(obj, path)
    raise CheckpointError(f"{path}: unknown weights format (expected .safetensors, .bin, .pt, .pth or .ckpt)")


def _model_folder(folder: Path) -> Checkpoint:
    cfg_path = folder / "config.json"
    config = json.loads(cfg_path.read_text()) if cfg_path.is_file() else None
    index = sorted(folder.glob("diffusion_pytorch_model*.safetensors.index.json"))
    if index:
        # Sharded: the index maps every key to its shard file.
        shards = sorted(set(json.loads(index[0].read_text())["weight_map"].values()))
        state: dict[str, Tensor] = {}
        for s in shards:
            state.update(_load_file(folder / s))
        return Checkpoint(state, folder, config)
    for name in (DIFFUSERS_WEIGHTS, "diffusion_pytorch_model.fp16.safetensors", "diffusion_pytorch_model.bin"):
        if (folder / name).is_file():
            return Checkpoint(_load_file(folder / name), folder, config)
    raise CheckpointError(f"{folder}: no {DIFFUSERS_WEIGHTS} (or shards / .bin) in this diffusers model folder")


def load_state_dict(path: str | os.PathLike, component: str | None = None) -> Checkpoint:
    """Read a checkpoint in any layout listed in the module docstring."""
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"{p}: no such file or folder")
    if p.is_file():
        return Checkpoint(_load_file(p), p)
    if (p / "model_index.json").is_file() or component:
        comps = [component] if component else ["unet", "transformer"]
        for c in comps:
            if (p / c).is_dir():
                return _model_folder(p / c)
        raise CheckpointError(f"{p}: pipeline folder without a {' or '.join(comps)} component folder")
    return _model_folder(p)


# -- writing ----------------------------------------------------------------------------


def _check_target(path: Path, force: bool) -> None:
    if path.exists() and not force:
        raise FileExistsError(f"{path}: already exists (pass --force to overwrite)")


def save_safetensors(
    state: Mapping[str, Tensor], path: str | os.PathLike, metadata: Mapping[str, str] | None = None,
    force: bool = False,
) -> Path:
    """Atomic ``safetensors`` write (temp file in the same folder, then ``os.replace``)."""
    from safetensors.torch import save_file

    path = Path(path)
    _check_target(path, force)
    # safetensors refuses views that share storage; contiguous clones are always safe.
    flat = {k: v.detach().contiguous() for k, v in state.items()}
    return atomic_save(path, lambda tmp: save_file(flat, str(tmp), metadata=dict(metadata or {})))


def write_diffusers_folder(
    state: Mapping[str, Tensor], out_dir: str | os.PathLike, config: Mapping | None, force: bool = False,
    metadata: Mapping[str, str] | None = None,
) -> Path:
    """Write a diffusers model folder (``config.json`` + weights) atomically as a whole.

    The folder is built next to the target and renamed into place; with ``force``
    an existing target folder is replaced only after the new one is complete.
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out}: exists and is not a folder")
    _check_target(out, force)

    def write(tmp: Path) -> None:
        if config is not None:
            (tmp / "config.json").write_text(json.dumps(dict(config), indent=2, sort_keys=True) + "\n")
        save_safetensors(state, tmp / DIFFUSERS_WEIGHTS, metadata={"format": "pt", **dict(metadata or {})})

    return atomic_dir(out, write)


# -- merging angles into a state dict ---------------------------------------------------


def layer_angles(tensors: Mapping[str, Tensor], name: str = "layer") -> Tensor:
    """``wrap(A @ B)`` or ``wrap(theta)`` of one layer, float32 (:class:`.layer_spec.LayerSpec`)."""
    return LayerSpec.from_parts(tensors, name).angles()


def merge_state(
    state: Mapping[str, Tensor], layers: Mapping[str, Mapping[str, Tensor]], strength: float = 1.0,
    progress: Callable[[Iterable], Iterable] | None = None,
) -> dict[str, Tensor]:
    """A new state dict with ``state[key]`` rotated by ``strength * theta`` for each ``layers[key]``.

    ``layers`` maps *state-dict weight keys* to ``{"A","B"}``/``{"theta"}``.  Every key
    and shape is checked, and every rotated weight checked finite, before anything
    is returned (nothing half-applied).  Untouched tensors are shared, not copied.
    """
    problems = []
    rotated: dict[str, Tensor] = {}
    items = list(layers.items())
    for key, tensors in progress(items) if progress else items:
        if key not in state:
            problems.append(f"{key}: not in the base model")
            continue
        w = state[key]
        try:
            new = LayerSpec.from_parts(tensors, key).rotated(w, strength)
        except functional.LoRaDShapeError as e:
            problems.append(str(e) if key in str(e) else f"{key}: {e}")
            continue
        if not torch.isfinite(new).all():
            problems.append(f"{key}: non-finite values after the rotation")
            continue
        rotated[key] = new
    if problems:
        raise CheckpointError("cannot merge:\n  " + "\n  ".join(problems))
    out = dict(state)
    out.update(rotated)
    return out
