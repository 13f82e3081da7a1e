"""A folder of captioned images for fine-tuning: scanned and checked before any model loads.

Two caption layouts, the ones kohya_ss / diffusers' DreamBooth scripts and ReVersion users
already have on disk:

* ``cat1.png`` + ``cat1.txt`` (same stem) for each image;
* ``metadata.jsonl`` beside the images: ``{"file_name": "cat1.png", "text": "a sks cat"}`` per
  line (the Hugging Face ``imagefolder`` layout; the caption key is configurable).

Every problem (missing folder, no images, an image without a caption, a record naming a
file that is not there, an unreadable image) is a :class:`ImageFolderError` naming the file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

__all__ = ["IMAGE_SUFFIXES", "METADATA_FILE", "ImageFolderError", "Example", "scan_folder", "load_images"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
METADATA_FILE = "metadata.jsonl"


class ImageFolderError(ValueError):
    """The image folder or one of its files is missing or malformed; the message names it."""


@dataclass(frozen=True)
class Example:
    path: Path
    caption: str


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _jsonl_captions(path: Path, key: str, names: set[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise ImageFolderError(f"{path}: not UTF-8 text ({e})") from None
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise ImageFolderError(f"{path}:{i}: not valid JSON ({e.msg})") from None
        if not isinstance(rec, dict) or not isinstance(rec.get("file_name"), str) or not isinstance(rec.get(key), str):
            found = sorted(rec) if isinstance(rec, dict) else type(rec).__name__
            raise ImageFolderError(f"{path}:{i}: expected string fields 'file_name' and {key!r} "
                                   f"(data.jsonl_key), found {found}")
        name = Path(rec["file_name"]).name
        if name not in names:
            raise ImageFolderError(f"{path}:{i}: file_name {rec['file_name']!r} is not an image in {path.parent} "
                                   f"(expected one of the {len(names)} image files there)")
        out[name] = rec[key].strip()
    return out


def _txt_caption(image: Path) -> str | None:
    txt = image.with_suffix(".txt")
    if not txt.is_file():
        return None
    try:
        return txt.read_text(encoding="utf-8").strip()
    except UnicodeDecodeError as e:
        raise ImageFolderError(f"{txt}: not UTF-8 text ({e})") from None


def scan_folder(folder: str | Path, captions: str = "auto", instance_prompt: str = "",
                jsonl_key: str = "text") -> list[Example]:
    """The images of ``folder`` (sorted by name) with their captions; see the module doc."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ImageFolderError(f"data.images: {folder} is not a folder (expected images with captions)")
    images = _images(folder)
    if not images:
        raise ImageFolderError(f"data.images: {folder} holds no images (expected files ending in "
                               f"{', '.join(IMAGE_SUFFIXES)})")
    meta = folder / METADATA_FILE
    if meta.is_file():
        found = _jsonl_captions(meta, jsonl_key, {p.name for p in images})
        source = f"{meta}"
    else:
        found = {p.name: c for p in images if (c := _txt_caption(p)) is not None}
        source = "a same-name .txt file"
    if captions not in ("auto", "files", "instance"):
        raise ImageFolderError(f"data.captions: expected auto, files or instance, got {captions!r}")
    mode = captions if captions != "auto" else ("files" if found else "instance")
    if mode == "instance":
        if not instance_prompt.strip():
            raise ImageFolderError(f"{folder}: no captions found and no instance prompt given "
                                   "(set data.instance_prompt, or add a .txt caption per image)")
        return [Example(p, instance_prompt.strip()) for p in images]
    missing = [p for p in images if not found.get(p.name)]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise ImageFolderError(f"{missing[0]}: image without a caption{more}; expected a caption in {source}, "
                               "or set data.captions to 'instance' to use the instance prompt for every image")
    return [Example(p, found[p.name]) for p in images]


def _load_one(path: Path, size: int, center_crop: bool) -> Tensor:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            w, h = im.size
            if center_crop and w != h:
                s = min(w, h)
                left, top = (w - s) // 2, (h - s) // 2
                im = im.crop((left, top, left + s, top + s))
            if im.size != (size, size):
                im = im.resize((size, size), Image.BICUBIC)
            data = torch.frombuffer(bytearray(im.tobytes()), dtype=torch.uint8)
    except (OSError, UnidentifiedImageError) as e:
        raise ImageFolderError(f"{path}: cannot read the image ({e})") from None
    return data.view(size, size, 3).permute(2, 0, 1).float() / 127.5 - 1.0


def load_images(paths: list[Path], size: int, center_crop: bool = True) -> Tensor:
    """``[N, 3, size, size]`` in [-1, 1] (the VAE's input range); no flips (they would mirror relations)."""
    return torch.stack([_load_one(Path(p), size, center_crop) for p in paths])
