"""Apply a ``.lorad`` to ComfyUI MODEL/CLIP patchers: folders, key maps, validate, ``add_patches``.

All-or-nothing: every layer is resolved and shape-checked against the model (and
CLIP, where the file has text-encoder keys) before either clone gets a patch.
"""

from __future__ import annotations

import os

import folder_paths

from .adapter import LoRaDAdapter
from .fit import model_arch, plan
from .lorad_file import LoRaDInfo, LoRaDReadError, read_lorad
from .resolve import LoRaDMatchError, Resolved

__all__ = ["register_folder", "list_files", "full_path", "load_info", "model_arch", "plan", "apply"]

FOLDER = "lorad"
LORAS_PREFIX = "loras/"
EXT = ".lorad.safetensors"


def register_folder() -> None:
    """``models/lorad`` (plus any extra_model_paths entry named ``lorad``), .safetensors only."""
    if FOLDER not in folder_paths.folder_names_and_paths:
        folder_paths.folder_names_and_paths[FOLDER] = ([os.path.join(folder_paths.models_dir, FOLDER)], {".safetensors"})


def list_files() -> list[str]:
    """Files in ``lorad`` plus ``*.lorad.safetensors`` found under ``loras`` (as ``loras/<name>``)."""
    own = list(folder_paths.get_filename_list(FOLDER))
    extra = [LORAS_PREFIX + f for f in folder_paths.get_filename_list("loras") if f.endswith(EXT)]
    return own + [f for f in extra if f[len(LORAS_PREFIX):] not in own]


def full_path(name: str) -> str:
    path = folder_paths.get_full_path(FOLDER, name)
    if path is None and name.startswith(LORAS_PREFIX):
        path = folder_paths.get_full_path("loras", name[len(LORAS_PREFIX):])
    if path is None:
        raise LoRaDReadError(f"{name}: no such file in models/{FOLDER} or models/loras")
    return path


# The last file read and validated, keyed by where it is and its size/mtime/inode, as ComfyUI's LoraLoader
# keeps its last LoRA: a strength change re-runs Load LoRaD, and reading, hashing and checking a
# 160 MB file again cost more than the re-patch itself.  One entry: it holds nothing the patched
# model does not already hold.
_LAST: list[tuple[tuple, LoRaDInfo]] = []


def load_info(name: str, header_only: bool = False) -> LoRaDInfo:
    path = full_path(name)
    if header_only:
        return read_lorad(path, header_only=True)
    st = os.stat(path)
    key = (os.path.realpath(path), st.st_size, st.st_mtime_ns, st.st_ino)
    if _LAST and _LAST[0][0] == key:
        return _LAST[0][1]
    info = read_lorad(path)
    _LAST[:] = [(key, info)]
    return info


def _patches(info: LoRaDInfo, resolved: list[Resolved]) -> dict:
    out = {}
    for r in resolved:
        parts = info.layers[r.prefix]
        weights = (parts["theta"],) if "theta" in parts else (parts["A"], parts["B"])
        out[r.patch_key] = LoRaDAdapter(set(), weights, r.prefix)
    return out


def apply(info: LoRaDInfo, model, clip, strength_model: float, strength_clip: float):
    """Patched clones of ``model`` (and ``clip``); originals untouched."""
    unet, te = plan(info, model, clip)
    new_model = model.clone()
    accepted = new_model.add_patches(_patches(info, unet), strength_model)
    if len(accepted) != len(unet):  # cannot happen after plan(); guard against ComfyUI API drift
        raise LoRaDMatchError(f"{info.path}: ComfyUI accepted {len(accepted)} of {len(unet)} model patches")
    new_clip = clip
    if clip is not None and te:
        new_clip = clip.clone()
        new_clip.add_patches(_patches(info, te), strength_clip)
    return new_model, new_clip, len(unet), len(te)
