"""Full training state on disk: written atomically, resumed exactly, refused when it does not match.

A checkpoint is a folder ``<output>/checkpoints/step-00000120/`` holding

* ``student.safetensors``, ``fake.safetensors`` (and ``ema.safetensors``) - trained parameters
  (a run that trains one part - a personalization adapter, a relation token - stores it as
  ``student`` and has no ``fake``);
* ``trainer_state.pt`` - optimizers, LR schedules, loss scalers, the data generator and
  torch RNG states, step;
* ``config.yaml`` and ``meta.json`` - config hash, base fingerprint, global batch, step.

It is built in a hidden temp folder and renamed into place (:func:`fsutil.atomic_dir`),
so a crash or a full disk mid-write leaves the previous checkpoints as they were.
Older checkpoints beyond ``keep`` are deleted only after the new one is complete.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch

from ..lorad.fsutil import atomic_dir
from .config import NOT_HASHED, from_dict, to_dict

_STEP_DIR = re.compile(r"^step-(\d{8})$")


class ResumeError(ValueError):
    """A resume checkpoint is missing, incomplete or from another config/base."""


@dataclass
class Snapshot:
    """Everything needed to continue a run exactly."""

    step: int
    student: dict[str, torch.Tensor]
    fake: dict[str, torch.Tensor] | None
    ema: dict[str, torch.Tensor] | None
    trainer_state: dict[str, Any]
    meta: dict[str, Any]


def checkpoint_root(output_dir: str | Path) -> Path:
    return Path(output_dir) / "checkpoints"


def list_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoints (hidden temp folders excluded), oldest first."""
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and _STEP_DIR.match(p.name) and (p / "meta.json").is_file()]
    return sorted(found, key=lambda p: int(_STEP_DIR.match(p.name).group(1)))


def save_checkpoint(root: Path, snap: Snapshot, cfg: Any, keep: int) -> Path:
    """Write ``snap`` atomically as ``step-XXXXXXXX`` and prune to the newest ``keep``."""
    import yaml
    from safetensors.torch import save_file

    final = root / f"step-{snap.step:08d}"

    def cpu(d: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k: v.detach().cpu().contiguous() for k, v in d.items()}

    def write(tmp: Path) -> None:
        save_file(cpu(snap.student), str(tmp / "student.safetensors"))
        if snap.fake is not None:
            save_file(cpu(snap.fake), str(tmp / "fake.safetensors"))
        if snap.ema is not None:
            save_file(cpu(snap.ema), str(tmp / "ema.safetensors"))
        torch.save(snap.trainer_state, tmp / "trainer_state.pt")
        (tmp / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
        # meta.json last: its presence marks a complete checkpoint even without the rename.
        (tmp / "meta.json").write_text(json.dumps({**snap.meta, "step": snap.step}, indent=2))

    # A writer killed mid-save (SIGKILL after a stop's grace) leaves only its hidden temp folder,
    # which list_checkpoints never counts; clear such leftovers once a new checkpoint is written.
    atomic_dir(final, write)
    for stale in root.glob(".step-*.tmp"):
        shutil.rmtree(stale, ignore_errors=True)
    for old in list_checkpoints(root)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def find_resume(spec: str, output_dir: str | Path) -> Path | None:
    """``""`` -> None; ``"latest"`` -> newest complete checkpoint (None if there is none); else a folder."""
    if not spec:
        return None
    if spec == "latest":
        found = list_checkpoints(checkpoint_root(output_dir))
        return found[-1] if found else None
    p = Path(spec)
    if not (p / "meta.json").is_file():
        raise ResumeError(f"resume: {p} is not a complete checkpoint folder (no meta.json)")
    return p


def _hashed_diff(old: dict, new: dict, not_hashed: set[str] = NOT_HASHED) -> list[str]:
    diffs = []

    def walk(a, b, prefix=""):
        for k in sorted(set(a) | set(b)):
            p = f"{prefix}{k}"
            va, vb = a.get(k), b.get(k)
            if isinstance(va, dict) or isinstance(vb, dict):
                walk(va or {}, vb or {}, p + ".")
            elif p not in not_hashed and va != vb:
                diffs.append(f"{p}: checkpoint {va!r} vs now {vb!r}")

    walk(old, new)
    return diffs


def check_compatible(ckpt: Path, cfg_hash: str, cfg: Any, base_fp: str, global_batch: int,
                     loader=from_dict, not_hashed: set[str] = NOT_HASHED) -> dict:
    """Refuse a checkpoint from another config, base or global batch; return its meta.

    ``loader``/``not_hashed`` are the config module's ``from_dict`` and unhashed fields (default:
    the distillation config); they only serve to name the differing fields.
    """
    import yaml

    try:
        meta = json.loads((ckpt / "meta.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ResumeError(f"resume: cannot read {ckpt / 'meta.json'} ({e})") from None
    problems = []
    if meta.get("config_hash") != cfg_hash:
        detail = []
        try:
            old = to_dict(loader(yaml.safe_load((ckpt / "config.yaml").read_text())))
            detail = _hashed_diff(old, to_dict(cfg), not_hashed)
        except Exception:  # an unreadable config still gets the hash message
            pass
        problems.append("it was written with a different config" + (": " + "; ".join(detail) if detail else
                                                                    f" (hash {meta.get('config_hash')} vs {cfg_hash})"))
    if meta.get("base_fingerprint") != base_fp:
        problems.append(f"it was trained on another base model (fingerprint {meta.get('base_fingerprint')} vs "
                        f"{base_fp} for {cfg.model.base})")
    if meta.get("global_batch") != global_batch:
        problems.append(f"its global batch was {meta.get('global_batch')} (batch_size x processes x grad_accum), "
                        f"now {global_batch}")
    if problems:
        raise ResumeError(f"resume: refusing checkpoint {ckpt}: " + "; ".join(problems))
    return meta


def load_checkpoint(ckpt: Path) -> Snapshot:
    from safetensors.torch import load_file

    meta = json.loads((ckpt / "meta.json").read_text())
    ema = load_file(str(ckpt / "ema.safetensors")) if (ckpt / "ema.safetensors").is_file() else None
    state = torch.load(ckpt / "trainer_state.pt", map_location="cpu", weights_only=True)
    fake = load_file(str(ckpt / "fake.safetensors")) if (ckpt / "fake.safetensors").is_file() else None
    return Snapshot(int(meta["step"]), load_file(str(ckpt / "student.safetensors")), fake, ema, state, meta)


class OutputExistsError(ValueError):
    """The output folder holds a previous run and neither resume nor force was given."""


def prepare_output(out: Path, resume_from: Path | None, resume_spec: str, force: bool, main: bool = True) -> None:
    """Refuse to start over a previous run by accident; with ``force`` drop its log and checkpoints.

    Only ``events.jsonl`` and ``checkpoints/`` are removed (never other files in the folder).
    """
    previous = [p for p in (out / "events.jsonl", checkpoint_root(out)) if p.exists()]
    if previous and resume_from is None and resume_spec != "latest" and not force:
        raise OutputExistsError(
            f"output.dir {out} already holds a run ({', '.join(p.name for p in previous)}); "
            "continue it with --resume latest, or start over with --output.force true"
        )
    if force and resume_from is None and main:
        shutil.rmtree(checkpoint_root(out), ignore_errors=True)
        (out / "events.jsonl").unlink(missing_ok=True)


class _LoadsState(Protocol):
    def load_state_dict(self, sd: dict[str, torch.Tensor]) -> None: ...


class ResumingRun(Protocol):
    """What :func:`finish_restore` sets on a run (distill and the fine-tunes provide it)."""

    ema: _LoadsState | None
    resume_from: Path | None
    step: int

    def log(self, msg: str) -> Any: ...


def finish_restore(run: ResumingRun, snap: Snapshot) -> None:
    """The end of every run's resume: EMA state (required when the run keeps an EMA), the step
    counter and the log line."""
    if run.ema is not None:
        if snap.ema is None:
            raise ResumeError(f"resume: {run.resume_from} has no EMA state but train.ema_decay > 0")
        run.ema.load_state_dict(snap.ema)
    run.step = snap.step
    run.log(f"resumed from {run.resume_from} at step {run.step}")
