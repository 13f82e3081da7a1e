"""A finished job's results: the files it exported, handed to the page for download, and copied to ComfyUI.

Serving rule (see docs/trainer-tab.md): the app launches Gradio with *no* ``allowed_paths``,
so ``/gradio_api/file=...`` serves only Gradio's own cache (what a handler returned: sample
grids, plots, downloads) and user uploads - never a file under the roots by its path.
A download is offered only for an ``export`` record of a job in this app's store, only if
the file lies inside the roots; it is hard-linked (copied across filesystems) into a private
temp folder, from which Gradio copies it into its cache when the page asks.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import weakref
from pathlib import Path

from ...lorad.fsutil import atomic_save
from ..jobs import EVENTS_FILE_NAME
from ..jobs.store import Job
from .security import PathNotAllowed, Roots

LORAD_SUFFIX = ".lorad.safetensors"


def exported_files(out_dir: str | Path) -> dict[str, Path]:
    """``{kind: path}`` of the run's ``export`` records (the newest per kind), as logged."""
    out: dict[str, Path] = {}
    path = Path(out_dir) / EVENTS_FILE_NAME
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError:
        return out
    for line in lines:
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict) and rec.get("event") == "export" and rec.get("path"):
            out[str(rec.get("kind") or Path(rec["path"]).name)] = Path(rec["path"])
    return out


class Results:
    def __init__(self, roots: Roots, comfy_lorad_dir: str | Path | None = None):
        self.roots = roots
        self.comfy_lorad_dir = Path(comfy_lorad_dir) if comfy_lorad_dir else None
        self._served: Path | None = None

    def files(self, job: Job) -> dict[str, Path]:
        """The job's exported *files* inside the roots (a merged diffusers folder is not a download)."""
        out = {}
        for kind, p in exported_files(job.out_dir).items():
            if not p.is_absolute():
                p = Path(job.cwd or self.roots.base) / p
            try:
                real = self.roots.resolve(p, what=f"export {kind}")
            except PathNotAllowed:
                continue  # an events file cannot point the page outside the roots
            if real.is_file():
                out[kind] = real
        return out

    def served_folder(self) -> Path:
        if self._served is None or not self._served.is_dir():
            self._served = Path(tempfile.mkdtemp(prefix="wadi-tab-served-"))
            # Links only, but still this app's: gone with the app (or at interpreter exit).
            weakref.finalize(self, shutil.rmtree, self._served, True)
        return self._served

    def downloads(self, job: Job) -> list[Path]:
        """Paths the page may offer for download: links to the job's exports in the served folder."""
        out = []
        for kind, src in self.files(job).items():
            dst = self.served_folder() / job.id / kind / src.name
            st = src.stat()
            if not (dst.is_file() and dst.stat().st_size == st.st_size and dst.stat().st_mtime_ns == st.st_mtime_ns):
                dst.parent.mkdir(parents=True, exist_ok=True)
                dst.unlink(missing_ok=True)
                try:
                    os.link(src, dst)  # no copy of a multi-GB merged file where one filesystem allows
                except OSError:
                    shutil.copy2(src, dst)
            out.append(dst)
        return out

    def copy_to_comfy(self, job: Job, overwrite: bool = False) -> Path:
        """Copy the job's student ``.lorad`` into ComfyUI's ``models/lorad`` as ``<output folder>.lorad.safetensors``."""
        if self.comfy_lorad_dir is None:
            raise ValueError("not running beside ComfyUI (start the tab from ComfyUI's sidebar, or pass --comfy-lorad-dir)")
        src = self.files(job).get("student")
        if src is None or not src.name.endswith(LORAD_SUFFIX):
            raise ValueError(f"job {job.id} has no exported student .lorad yet (status {job.status})")
        target_dir = self.roots.resolve(self.comfy_lorad_dir, what="ComfyUI models/lorad", write=True)
        dst = target_dir / f"{Path(job.out_dir).name}{LORAD_SUFFIX}"
        if dst.exists() and not overwrite:
            raise FileExistsError(f"{dst} exists; tick 'overwrite' to replace it")
        atomic_save(dst, lambda tmp: shutil.copyfile(src, tmp))
        return dst
