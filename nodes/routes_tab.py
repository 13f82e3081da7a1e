"""Pack routes behind the ComfyUI sidebar tab (web/wadi_trainer_tab.js).

* ``GET  /wadi/jobs``             jobs of the trainer's store, newest first, with live progress
* ``GET  /wadi/tab/status``       is the trainer app up, and where (always a 127.0.0.1 URL)
* ``POST /wadi/tab/start``        start ``wadi tab`` as a subprocess (argument list, loopback only)
* ``POST /wadi/jobs/{id}/stop``   cooperative stop (the app's monitor escalates to a group kill)

Gradio is ASGI and cannot live inside ComfyUI's aiohttp server, so the trainer runs
as its own process on 127.0.0.1 and the sidebar shows it in an iframe.  This module
never imports Gradio or torch: it reads the job store (SQLite) directly.  Register
with :func:`register_routes` while the pack is imported (routes added later are
never mounted).
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

from ..trainer.jobs.runner import PACK_MAIN, PACK_ROOT, JobRunner
from ..trainer.jobs.store import JobStore
from ..trainer.jobs.tail import EventTail

log = logging.getLogger("wadi")

DEFAULT_PORT = int(os.environ.get("WADI_TAB_PORT", "7861"))
HOST = "127.0.0.1"
# What the trainer app imports that ComfyUI does not ship (the pack's `trainer`/`tab` extras).
TRAINER_MODULES = ("gradio", "diffusers", "accelerate", "peft", "matplotlib")
SETUP_COMMAND = f'bash "{PACK_ROOT / "scripts" / "setup.sh"}"'


class TrainerMissing(RuntimeError):
    """The trainer's interpreter lacks its packages; the message says the one command that adds them."""


def trainer_python() -> str:
    """Where the trainer runs: ``WADI_TRAINER_PYTHON``, else the pack's own ``.venv`` (made by
    ``scripts/setup.sh``), else this interpreter.  Not ComfyUI's by design: gradio and peft pin
    packages ComfyUI also uses, so they get an environment of their own."""
    if os.environ.get("WADI_TRAINER_PYTHON"):
        return os.environ["WADI_TRAINER_PYTHON"]
    for own in (PACK_ROOT / ".venv" / "bin" / "python", PACK_ROOT / ".venv" / "Scripts" / "python.exe"):
        if own.is_file():
            return str(own)
    return sys.executable


def missing_modules(python: str) -> list[str]:
    """The trainer's modules that ``python`` cannot find (looked up, not imported: gradio takes seconds)."""
    probe = "import importlib.util as u, sys; print(' '.join(m for m in sys.argv[1:] if u.find_spec(m) is None))"
    try:
        done = subprocess.run([python, "-c", probe, *TRAINER_MODULES], capture_output=True, text=True, timeout=60)
    except OSError:
        return list(TRAINER_MODULES)
    return done.stdout.split() if done.returncode == 0 else list(TRAINER_MODULES)


def comfy_folders() -> dict[str, Path]:
    """ComfyUI's output and models folders (cwd-relative stand-ins outside ComfyUI)."""
    try:
        import folder_paths  # ComfyUI's module; only importable inside a ComfyUI process

        return {"output": Path(folder_paths.get_output_directory()), "models": Path(folder_paths.models_dir)}
    except ImportError:
        return {"output": Path.cwd() / "output", "models": Path.cwd() / "models"}


class TabService:
    """What the routes do, without aiohttp (so it is testable and reusable)."""

    def __init__(self, base: Path | None = None, port: int = DEFAULT_PORT, python: str | None = None):
        folders = comfy_folders()
        self.base = Path(base) if base else folders["output"] / "wadi"
        # The pack's assets/ (shipped tiny world) is readable; the pack's code folders are not a root.
        self.roots = [self.base, folders["models"], PACK_ROOT / "assets"]
        self.lorad_dir = folders["models"] / "lorad"  # ComfyUI's folder for .lorad files (nodes/patching.py)
        self.jobs_dir = self.base / "jobs"
        self.port, self.python = port, python or trainer_python()
        self._proc: subprocess.Popen | None = None
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}/"

    def app_command(self) -> list[str]:
        argv = [self.python, str(PACK_MAIN), "tab", "--port", str(self.port), "--no-browser",
                "--jobs-dir", str(self.jobs_dir), "--presets-dir", str(self.base / "presets")]
        for root in self.roots:
            argv += ["--root", str(root)]
        return argv + ["--comfy-lorad-dir", str(self.lorad_dir)]

    def app_up(self) -> bool:
        try:
            with socket.create_connection((HOST, self.port), timeout=0.3):
                return True
        except OSError:
            return False

    def status(self) -> dict[str, Any]:
        starting = self._proc is not None and self._proc.poll() is None
        up = self.app_up()
        exited = self._proc.returncode if (self._proc is not None and self._proc.poll() is not None) else None
        return {"running": up, "starting": starting and not up, "url": self.url, "exit_code": exited,
                "log": str(self.base / "tab.log")}

    def start_app(self) -> dict[str, Any]:
        with self._lock:
            if self.app_up() or (self._proc is not None and self._proc.poll() is None):
                return self.status()
            missing = missing_modules(self.python)
            if missing:
                raise TrainerMissing(
                    f"The trainer needs {', '.join(missing)}, which {self.python} does not have. It runs in its own "
                    f"environment so that ComfyUI's packages stay as they are; make it once with one command in a "
                    f"terminal: {SETUP_COMMAND} (then press Start again)")
            self.base.mkdir(parents=True, exist_ok=True)
            with open(self.base / "tab.log", "ab") as logf:
                # Same session as ComfyUI: Ctrl-C there ends the app too; jobs have their own
                # sessions, keep running, and the next app re-attaches to them.
                self._proc = subprocess.Popen(self.app_command(), stdout=logf, stderr=subprocess.STDOUT,
                                              stdin=subprocess.DEVNULL, cwd=str(self.base))
            log.info("WaDi: trainer app starting on %s (log %s)", self.url, self.base / "tab.log")
        return self.status()

    def jobs(self, limit: int = 50) -> list[dict[str, Any]]:
        if not (self.jobs_dir / "jobs.sqlite").is_file():
            return []
        out = []
        for job in JobStore(self.jobs_dir).list()[:limit]:
            d = {k: v for k, v in job.to_json().items() if k not in ("argv", "pid_start")}
            if job.active or job.status in ("finished", "stopped"):
                tail = EventTail(job.out_dir)
                tail.update()
                p = tail.progress()
                if p.step is not None:
                    d.update(progress=p.text(), step=p.step, total_steps=p.total)
            out.append(d)
        return out

    def stop_job(self, job_id: str) -> dict[str, Any]:
        runner = JobRunner(JobStore(self.jobs_dir), attach=False)  # no poll: this process never starts jobs
        return runner.stop(job_id).to_json()


def register_routes(service: TabService | None = None) -> bool:
    """Mount the routes on ``PromptServer.instance`` (False outside a ComfyUI server)."""
    try:
        from aiohttp import web
        from server import PromptServer
    except ImportError:
        return False
    server = getattr(PromptServer, "instance", None)
    if server is None or getattr(server, "_wadi_tab_routes", False):
        return False
    add_routes(server.routes, web, service or TabService())
    server._wadi_tab_routes = True
    return True


def add_routes(routes: Any, web: Any, svc: TabService) -> None:
    """The aiohttp handlers (``routes`` is an aiohttp RouteTableDef, ``web`` is ``aiohttp.web``)."""

    @routes.get("/wadi/jobs")
    async def wadi_jobs(request):
        return web.json_response({"jobs": svc.jobs(), "app": svc.status()})

    @routes.get("/wadi/tab/status")
    async def wadi_tab_status(request):
        return web.json_response(svc.status())

    @routes.post("/wadi/tab/start")
    async def wadi_tab_start(request):
        try:
            return web.json_response(svc.start_app())
        except TrainerMissing as e:
            return web.json_response({"error": str(e)}, status=409)
        except OSError as e:
            return web.json_response({"error": f"cannot start the trainer app: {e}"}, status=500)

    @routes.post("/wadi/jobs/{job_id}/stop")
    async def wadi_job_stop(request):
        try:
            return web.json_response(svc.stop_job(request.match_info["job_id"]))
        except KeyError as e:
            return web.json_response({"error": str(e.args[0])}, status=404)
