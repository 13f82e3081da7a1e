"""Submit-time checks of every path a job will read or write: existence and kind, before it is queued.

A job behind a queue may start minutes later; a missing model or an output folder that
already holds a run must be refused at the click, with the field named, not surface as
"exit code 2; see the log".  The rules are the trainers' own (a diffusers folder has
``model_index.json``; prompts are read by :func:`trainer.prompts.load_prompts`; an output
folder with ``events.jsonl`` or ``checkpoints/`` holds a run), checked on the resolved
absolute paths the job will get.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")  # as trainer/imagefolder.py reads them
MAX_IMAGES_TRIED = 10_000  # a verify() reads headers only: cheap even for thousands


def model_folder(p: Path, field: str) -> None:
    if not p.exists():
        raise ValueError(f"{field}: {p} does not exist (expected a diffusers model folder)")
    if not p.is_dir():
        raise ValueError(f"{field}: {p} is a file; expected a diffusers model folder (with model_index.json)")
    if not (p / "model_index.json").is_file():
        raise ValueError(f"{field}: {p} has no model_index.json; expected a diffusers model folder")


def prompts_file(p: Path, field: str, cfg: Any = None) -> None:
    from ..prompts import load_prompts

    if not p.is_file():
        raise ValueError(f"{field}: {p} " + ("is a folder; expected a prompts file (.txt, .jsonl or COCO .json)"
                                              if p.is_dir() else "does not exist (expected a prompts file)"))
    data = getattr(cfg, "data", None)
    try:
        load_prompts(p, getattr(data, "format", "auto"), getattr(data, "jsonl_key", "prompt"))
    except (ValueError, OSError, UnicodeDecodeError) as e:
        raise ValueError(f"{field}: {e}") from None


def images_folder(p: Path, field: str, cfg: Any = None) -> None:
    """A folder whose images all decode (the trainer stops at the first that does not), at least one,
    with captions as the trainer's own :func:`trainer.imagefolder.scan_folder` requires them."""
    from PIL import Image

    if not p.exists():
        raise ValueError(f"{field}: {p} does not exist (expected a folder of images)")
    if not p.is_dir():
        raise ValueError(f"{field}: {p} is a file; expected a folder of images")
    images = sorted(x for x in p.iterdir() if x.is_file() and x.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise ValueError(f"{field}: {p} holds no image (expected files ending in {', '.join(IMAGE_SUFFIXES)})")
    broken = []
    for img in images[:MAX_IMAGES_TRIED]:
        try:
            with Image.open(img) as im:
                im.verify()
        except Exception:  # PIL raises many types for a broken file
            broken.append(img.name)
    if broken:
        more = f" and {len(broken) - 3} more" if len(broken) > 3 else ""
        raise ValueError(f"{field}: {p}: cannot read {', '.join(broken[:3])}{more} as an image")
    data = getattr(cfg, "data", None)
    if data is not None and hasattr(data, "captions"):
        from ..imagefolder import ImageFolderError, scan_folder

        try:
            scan_folder(p, data.captions, getattr(data, "instance_prompt", ""), getattr(data, "jsonl_key", "text"))
        except ImageFolderError as e:
            raise ValueError(f"{field}: {e}") from None


def lorad_file(p: Path, field: str) -> None:
    if not p.is_file():
        raise ValueError(f"{field}: {p} " + ("is a folder" if p.is_dir() else "does not exist")
                         + "; expected a .lorad.safetensors file")


def output_free(p: Path, field: str, force: bool, resuming: bool = False) -> None:
    """An output folder must not hold a run unless the user starts over (force) or resumes."""
    if p.exists() and not p.is_dir():
        raise ValueError(f"{field}: {p} is a file; expected an output folder")
    previous = [n for n in ("events.jsonl", "checkpoints") if (p / n).exists()]
    if previous and not force and not resuming:
        raise ValueError(f"{field}: {p} already holds a run ({', '.join(previous)}); select its job and press "
                         "Resume, choose another folder, or tick output.force to start over")


# field path -> check of a (non-empty) resolved path.  Fields not listed are only confined to the roots.
PATH_CHECKS: dict[str, Callable[..., None]] = {
    "model.base": model_folder,
    "data.prompts": prompts_file,
    "data.images": images_folder,
    "model.student": lorad_file,
    "output.preview_student": lorad_file,
}


def check_paths(cfg: Any, resolved: dict[str, Path], out_field: str, force: bool, resuming: bool = False) -> None:
    """Raise ValueError on the first path of ``resolved`` (``{field: absolute path}``) of the wrong kind."""
    for field, path in resolved.items():
        check = PATH_CHECKS.get(field)
        if check in (prompts_file, images_folder):
            check(path, field, cfg)
        elif check is not None:
            check(path, field)
    if out_field in resolved:
        output_free(resolved[out_field], out_field, force, resuming)
