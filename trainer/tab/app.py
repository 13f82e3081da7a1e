"""The tab's behaviour, independent of the page layout: every button's handler lives here.

:class:`TabApp` turns form values into a config through the config module (so
the CLI's checks apply), confines paths, writes presets, submits/stops/resumes
jobs and assembles what a job view shows.  :mod:`.layout` only wires these
methods to widgets, which keeps them testable without a browser.
"""

from __future__ import annotations

import io
import os
import shutil
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..jobs.runner import (
    DEFAULT_GRACE_S,
    DEFAULT_GRACE_STEPS,
    PACK_ROOT,
    JobRefused,
    JobRunner,
    last_checkpoint_step,
)
from ..jobs.store import Job, JobStore
from ..jobs.tail import EventTail, format_seconds, loss_plot_png
from .checks import check_paths
from .forms import FieldSpec, config_to_values, field_specs, values_to_dict
from .kinds import FIRST_RUN_PRESET, TrainKind, check_preset_name, load_kinds, preset_files
from .results import Results
from .security import DEFAULT_MAX_UPLOAD_BYTES, PathNotAllowed, Roots, check_upload

ASSETS = PACK_ROOT / "assets"


def default_roots() -> list[Path]:
    """The read/write roots when none are given: the current folder."""
    return [Path.cwd()]


def readonly_roots() -> list[Path]:
    """Always read-only: the pack's ``assets/`` (the shipped tiny world), whatever ``--root`` says."""
    return [ASSETS] if ASSETS.is_dir() else []


@dataclass
class Settings:
    jobs_dir: Path
    roots: Roots
    presets_dir: Path
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES
    grace_s: float = DEFAULT_GRACE_S  # a stopped job's least grace before SIGTERM ...
    grace_steps: float = DEFAULT_GRACE_STEPS  # ... or this many median step times, if longer
    term_s: float = 3.0
    default_devices: str = "cpu"
    comfy_lorad_dir: Path | None = None  # beside ComfyUI: its models/lorad (the "copy to ComfyUI" action)

    @classmethod
    def create(cls, roots: list[str | os.PathLike[str]] | None = None, jobs_dir: str | None = None,
               presets_dir: str | None = None, **kw: Any) -> Settings:
        """Defaults: roots = [cwd] (+ the read-only assets), jobs under ``<first root>/outputs/tab/jobs``,
        presets beside them."""
        r = Roots(roots or default_roots(), readonly=readonly_roots())
        jobs = r.resolve(jobs_dir or "outputs/tab/jobs", what="--jobs-dir", write=True)
        presets = r.resolve(presets_dir or "outputs/tab/presets", what="--presets-dir", write=True)
        if kw.get("comfy_lorad_dir"):
            kw["comfy_lorad_dir"] = r.resolve(kw["comfy_lorad_dir"], what="--comfy-lorad-dir", write=True)
        if "default_devices" not in kw:
            kw["default_devices"] = "0" if shutil.which("nvidia-smi") else "cpu"
        return cls(jobs_dir=jobs, roots=r, presets_dir=presets, **kw)


@dataclass
class JobView:
    job: Job | None
    status: str = ""
    progress: str = ""
    sample: Path | None = None
    plot_png: bytes | None = None
    log: str = ""
    n_records: int = 0
    extra: dict = field(default_factory=dict)


class TabApp:
    def __init__(self, settings: Settings, kinds: dict[str, TrainKind | str] | None = None,
                 runner: JobRunner | None = None):
        self.settings = settings
        self.roots = settings.roots
        self.kinds = kinds if kinds is not None else load_kinds()
        self.store = runner.store if runner else JobStore(settings.jobs_dir)
        self.runner = runner or JobRunner(self.store, grace_s=settings.grace_s, term_s=settings.term_s,
                                          grace_steps=settings.grace_steps, exclusive=True)
        self._tails: dict[str, EventTail] = {}
        self._plots: dict[str, tuple[int, bytes | None]] = {}
        self._lock = threading.Lock()
        self.results = Results(settings.roots, settings.comfy_lorad_dir)

    # -- configs ------------------------------------------------------------------------------
    def kind(self, name: str) -> TrainKind:
        k = self.kinds.get(name)
        if not isinstance(k, TrainKind):
            raise ValueError(k or f"unknown training kind {name!r}")
        return k

    def specs(self, kind: str) -> list[FieldSpec]:
        return field_specs(self.kind(kind).config_cls)

    def config_from_values(self, kind: str, values: list[Any], absolute: bool = False) -> Any:
        """Form values -> a checked config; paths must lie inside the roots.  Raises ValueError.

        With ``absolute`` the path fields are replaced by their resolved absolute paths:
        a job's config.yaml then means the same thing from any working folder.
        """
        k = self.kind(kind)
        cfg = k.from_dict(values_to_dict(self.specs(kind), list(values), version=k.version))
        if k.validate is not None:
            k.validate(cfg)
        self._resolve_paths(k, cfg, absolute)
        return cfg

    def _resolve_paths(self, k: TrainKind, cfg: Any, absolute: bool) -> dict[str, Path]:
        resolved = {}
        for path in k.path_fields:
            value = k.get(cfg, path)
            if value:
                resolved[path] = real = self.roots.resolve(value, what=path, write=path in k.write_fields)
                if absolute:
                    k.set(cfg, path, str(real))
        return resolved

    def checked_config(self, kind: str, values: list[Any]) -> Any:
        """:meth:`config_from_values` (absolute paths) plus the existence and kind of every path
        (:mod:`.checks`): what a job is submitted with.  Raises ValueError naming the field."""
        k = self.kind(kind)
        cfg = k.from_dict(values_to_dict(self.specs(kind), list(values), version=k.version))
        if k.validate is not None:
            k.validate(cfg)
        resolved = self._resolve_paths(k, cfg, absolute=True)
        force = bool(getattr(getattr(cfg, "output", None), "force", False))
        check_paths(cfg, resolved, k.out_dir_field, force, resuming=bool(getattr(cfg, k.resume_field, "")))
        return cfg

    def preview(self, kind: str, values: list[Any]) -> tuple[str, str]:
        """(the YAML a job would get, the command it would run) — or the error, in the first slot."""
        try:
            cfg = self.config_from_values(kind, values, absolute=True)
        except ValueError as e:
            return f"# not valid: {e}", ""
        k = self.kind(kind)
        argv = self.runner.command(k.subcommand, ["--config", "<job folder>/config.yaml"],
                                   ("cpu",), self.runner.python)
        return k.dump_yaml(cfg), " ".join(argv)

    # -- presets ------------------------------------------------------------------------------
    def preset_choices(self, kind: str) -> list[str]:
        return sorted(preset_files(kind, self.settings.presets_dir))

    def first_run_preset(self, kind: str) -> str | None:
        """The shipped preset to preselect (``tinyworld`` for distill) while the user has configured
        nothing of their own (no saved preset of this kind), if it loads and its paths check."""
        name = FIRST_RUN_PRESET.get(kind)
        user = Path(self.settings.presets_dir) / kind
        if not name or name not in self.preset_choices(kind) or (user.is_dir() and any(user.glob("*.yaml"))):
            return None
        try:
            k = self.kind(kind)
            cfg = k.load_yaml(preset_files(kind, self.settings.presets_dir)[name])
            check_paths(cfg, self._resolve_paths(k, cfg, absolute=False), out_field="", force=True)
        except ValueError:
            return None  # e.g. a build without the shipped assets
        return name

    def preset_path(self, kind: str, name: str) -> Path:
        files = preset_files(kind, self.settings.presets_dir)
        if name not in files:
            raise ValueError(f"no preset {name!r}; have {sorted(files)}")
        return files[name]

    def load_preset(self, kind: str, name: str) -> list[Any]:
        return config_to_values(self.kind(kind).load_yaml(self.preset_path(kind, name)), self.specs(kind))

    def load_uploaded(self, kind: str, path: str) -> list[Any]:
        p = check_upload(path, self.settings.max_upload_bytes, what="preset upload")
        return config_to_values(self.kind(kind).load_yaml(p), self.specs(kind))

    def save_preset(self, kind: str, name: str, values: list[Any], overwrite: bool = False) -> Path:
        cfg = self._unvalidated(kind, values)
        target = self.settings.presets_dir / kind / f"{check_preset_name(name)}.yaml"
        return self.kind(kind).save_yaml(cfg, target, overwrite=overwrite)

    def _unvalidated(self, kind: str, values: list[Any]) -> Any:
        # A preset may be a partial set-up (no base model chosen yet): type-check it, skip validate().
        k = self.kind(kind)
        return k.from_dict(values_to_dict(self.specs(kind), list(values), version=k.version))

    # -- jobs ---------------------------------------------------------------------------------
    def start(self, kind: str, values: list[Any], devices: str, queue: bool = True) -> tuple[str, str | None]:
        """Submit a job from form values; returns (message, job id or None).  Nothing runs on an error."""
        try:
            k = self.kind(kind)
            cfg = self.checked_config(kind, values)
            out_dir = self.roots.resolve(k.get(cfg, k.out_dir_field), what=k.out_dir_field, write=True)
            job = self.runner.submit(kind, [], out_dir, devices or self.settings.default_devices,
                                     subcommand=k.subcommand, queue=queue, cwd=self.roots.base,
                                     config_yaml=k.dump_yaml(cfg),
                                     title=str(getattr(getattr(cfg, "output", None), "title", "") or out_dir.name))
        except (ValueError, JobRefused, PathNotAllowed, OSError) as e:
            return f"Not started: {e}", None
        return self._submitted(job), job.id

    def resume(self, job_id: str, devices: str, queue: bool = True) -> tuple[str, str | None]:
        """A new job continuing ``job_id``'s run from its latest checkpoint (``--resume latest``)."""
        try:
            old = self.store.get(job_id)
            k = self.kind(old.kind)
            if old.active:
                raise ValueError(f"job {job_id} is still {old.status}; stop it before resuming")
            cfg_text = self.runner.config_path(old).read_text(encoding="utf-8")
            # The inputs must still be there (a moved model would fail the job seconds after the click).
            cfg = k.load_yaml(self.runner.config_path(old))
            cwd = Path(old.cwd or self.roots.base)
            resolved = {p: cwd / v for p in k.path_fields if (v := k.get(cfg, p))}
            check_paths(cfg, resolved, k.out_dir_field, force=False, resuming=True)
            job = self.runner.submit(old.kind, [f"--{k.resume_field}", "latest"], old.out_dir,
                                     devices or old.device, subcommand=k.subcommand, queue=queue,
                                     resume_of=old.id, cwd=old.cwd or self.roots.base, config_yaml=cfg_text,
                                     title=old.title)
        except (ValueError, KeyError, JobRefused, OSError) as e:
            return f"Not resumed: {e.args[0] if isinstance(e, KeyError) else e}", None
        return self._submitted(job, f"resuming {job_id}"), job.id

    @staticmethod
    def _submitted(job: Job, what: str = "") -> str:
        what = f" ({what})" if what else ""
        if job.status == "queued":
            return f"Job {job.id}{what} is {job.message}."
        return f"Started job {job.id}{what} on device {job.device}."

    def stop(self, job_id: str) -> str:
        try:
            job = self.runner.stop(job_id)
        except KeyError as e:
            return str(e.args[0])
        if job.status == "stopping":
            return f"Stopping job {job_id}: {job.message}."
        return f"Job {job_id} is {job.status}" + (f" ({job.message})." if job.message else ".")

    def jobs(self, kind: str | None = None) -> list[Job]:
        return self.store.list(kind=kind)

    @staticmethod
    def job_row(job: Job) -> list[str]:
        import time

        started = time.strftime("%m-%d %H:%M:%S", time.localtime(job.started)) if job.started else ""
        took = format_seconds((job.ended or time.time()) - job.started) if job.started else ""
        return [job.id, job.title, job.status, job.device, job.out_dir, started, took, job.message]

    # -- results ------------------------------------------------------------------------------
    def downloads(self, job_id: str | None) -> list[Path]:
        """The finished job's exported files, as links the page may hand out (see :mod:`.results`)."""
        try:
            return self.results.downloads(self.store.get(job_id)) if job_id else []
        except (KeyError, OSError):
            return []

    def copy_to_comfy(self, job_id: str, overwrite: bool = False) -> str:
        try:
            dst = self.results.copy_to_comfy(self.store.get(job_id), overwrite=overwrite)
        except (KeyError, ValueError, OSError) as e:
            return f"Not copied: {e.args[0] if isinstance(e, KeyError) else e}"
        return f"Copied to {dst} (ComfyUI lists it under lorad after a refresh)."

    def view(self, job_id: str | None) -> JobView:
        """Everything the job panel shows for one job (incremental: only new events are read)."""
        if not job_id:
            return JobView(None, status="No job selected.")
        try:
            job = self.store.get(job_id)
        except KeyError:
            return JobView(None, status=f"No job {job_id}.")
        with self._lock:
            tail = self._tails.setdefault(job.id, EventTail(job.out_dir))
            # A resumed run appends to the same events.jsonl, so its curves continue the old ones.
            tail.update()
            n = len(tail.records)
            cached = self._plots.get(job.id)
            if cached is None or cached[0] != n:
                cached = (n, loss_plot_png(tail.loss_series()))
                self._plots[job.id] = cached
            prog = tail.progress()
        # One state (the store's), with the newest checkpoint on disk: the progress line below
        # never repeats a state of its own, so the two cannot disagree.
        status = f"**{job.status}** · {job.message}"
        if job.status == "running":
            ckpt = last_checkpoint_step(job.out_dir)
            status += f" · last checkpoint: step {ckpt}" if ckpt is not None else ""
        if job.resume_of:
            status += f" · resumes {job.resume_of}"
        return JobView(job, status=status, progress=prog.text(), sample=self._sample_path(job, prog.sample),
                       plot_png=cached[1], log=self.runner.log_tail(job), n_records=n)

    def _sample_path(self, job: Job, logged: str | None) -> Path | None:
        """The logged sample grid, if it exists inside the roots (the log cannot point the page elsewhere)."""
        if not logged:
            return None
        p = Path(logged)
        if not p.is_absolute():
            p = Path(job.cwd or self.roots.base) / p
        try:
            p = self.roots.resolve(p, what="sample")
        except PathNotAllowed:
            return None
        return p if p.is_file() else None


def png_to_pil(png: bytes | None):
    if png is None:
        return None
    from PIL import Image

    return Image.open(io.BytesIO(png))

