"""Prompt lists for image-free distillation: .txt (one per line), .jsonl, COCO-captions .json.

Every problem is reported with the file (and line or record) and what was expected,
before any model is loaded.
"""

from __future__ import annotations

import json
from pathlib import Path


class PromptFileError(ValueError):
    """A prompt file is missing, malformed or empty; the message names it."""


def detect_format(path: Path) -> str:
    suf = path.suffix.lower()
    if suf == ".txt":
        return "txt"
    if suf == ".jsonl":
        return "jsonl"
    if suf == ".json":
        return "coco"
    raise PromptFileError(
        f"{path}: cannot tell the prompt format from the suffix {suf!r}; use .txt, .jsonl or .json "
        "(COCO captions), or set data.format"
    )


def _read_text(path: Path) -> str:
    if not path.exists():
        raise PromptFileError(f"prompt file {path} does not exist")
    if not path.is_file():
        raise PromptFileError(f"prompt file {path} is not a file")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise PromptFileError(f"{path}: not UTF-8 text ({e})") from None


def _from_txt(path: Path) -> list[str]:
    return [line.strip() for line in _read_text(path).splitlines() if line.strip()]


def _from_jsonl(path: Path, key: str) -> list[str]:
    out = []
    for i, line in enumerate(_read_text(path).splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise PromptFileError(f"{path}:{i}: not valid JSON ({e.msg})") from None
        if isinstance(rec, str):
            text = rec
        elif isinstance(rec, dict) and isinstance(rec.get(key), str):
            text = rec[key]
        else:
            found = sorted(rec) if isinstance(rec, dict) else type(rec).__name__
            raise PromptFileError(f"{path}:{i}: expected a string field {key!r} (data.jsonl_key), found {found}")
        if text.strip():
            out.append(text.strip())
    return out


def _from_coco(path: Path) -> list[str]:
    try:
        data = json.loads(_read_text(path))
    except json.JSONDecodeError as e:
        raise PromptFileError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None
    anns = data.get("annotations") if isinstance(data, dict) else None
    if not isinstance(anns, list):
        raise PromptFileError(f"{path}: a COCO captions file needs a top-level 'annotations' list")
    out = []
    for i, a in enumerate(anns):
        if not isinstance(a, dict) or not isinstance(a.get("caption"), str):
            raise PromptFileError(f"{path}: annotations[{i}] has no string 'caption'")
        if a["caption"].strip():
            out.append(a["caption"].strip())
    return out


def load_prompts(path: str | Path, fmt: str = "auto", jsonl_key: str = "prompt", max_prompts: int = 0) -> list[str]:
    """Read, strip and de-duplicate (order kept) the prompts of ``path``; error if none remain."""
    p = Path(path)
    fmt = detect_format(p) if fmt == "auto" else fmt
    if fmt == "txt":
        prompts = _from_txt(p)
    elif fmt == "jsonl":
        prompts = _from_jsonl(p, jsonl_key)
    elif fmt == "coco":
        prompts = _from_coco(p)
    else:
        raise PromptFileError(f"data.format: unknown prompt format {fmt!r}; expected txt, jsonl or coco")
    prompts = list(dict.fromkeys(prompts))  # COCO has ~5 captions per image, some identical
    if max_prompts > 0:
        prompts = prompts[:max_prompts]
    if not prompts:
        raise PromptFileError(f"{p}: no prompts found (the {fmt} file is empty or has only blank captions)")
    return prompts
