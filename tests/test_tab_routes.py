"""ComfyUI side of the trainer tab: pack routes (with stand-ins for aiohttp) and the app launcher."""

from __future__ import annotations

import socket
import sys
import time
from pathlib import Path

import httpx
import yaml
from fake_aiohttp import Routes, Web, call
from wadi_lorad.nodes.routes_tab import TabService, add_routes, register_routes
from wadi_lorad.trainer.jobs.runner import JobRunner
from wadi_lorad.trainer.jobs.store import JobStore

FAKE = Path(__file__).with_name("tab_fake_trainer.py")


def test_routes_list_and_stop_jobs(tmp_path):
    svc = TabService(base=tmp_path / "wadi", port=1)
    routes = Routes()
    add_routes(routes, Web, svc)
    assert set(routes.handlers) == {("GET", "/wadi/jobs"), ("GET", "/wadi/tab/status"), ("POST", "/wadi/tab/start"),
                                    ("POST", "/wadi/jobs/{job_id}/stop")}
    assert call(routes, "GET", "/wadi/jobs")["data"]["jobs"] == []  # no store yet: nothing, no error

    runner = JobRunner(JobStore(svc.jobs_dir), command=lambda s, a, d, py: [py, str(FAKE), *a])
    cfg = {"out": str(tmp_path / "run"), "steps": 10_000, "sleep": 0.02}
    job = runner.submit("distill", [], cfg["out"], config_yaml=yaml.safe_dump(cfg))
    end = time.time() + 20
    while time.time() < end:
        listed = call(routes, "GET", "/wadi/jobs")["data"]
        if listed["jobs"] and (listed["jobs"][0].get("step") or 0) >= 2:
            break
        time.sleep(0.05)
    row = listed["jobs"][0]
    assert row["id"] == job.id and row["status"] == "running" and row["progress"].startswith("step ")
    assert "argv" not in row and listed["app"]["running"] is False and listed["app"]["url"] == "http://127.0.0.1:1/"

    stopped = call(routes, "POST", "/wadi/jobs/{job_id}/stop", job_id=job.id)
    assert stopped["status"] == 200 and stopped["data"]["status"] == "stopping"
    assert (Path(job.job_dir) / "STOP").exists()
    end = time.time() + 20
    while runner.store.get(job.id).active and time.time() < end:
        runner.poll()  # the app's monitor does this
        time.sleep(0.05)
    assert runner.store.get(job.id).status == "stopped"
    missing = call(routes, "POST", "/wadi/jobs/{job_id}/stop", job_id="nope")
    assert missing["status"] == 404 and "no job 'nope'" in missing["data"]["error"]


def test_register_outside_comfyui_is_a_no_op():
    assert register_routes() is False  # no aiohttp/PromptServer here


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_start_app_launches_wadi_tab_on_loopback(tmp_path):
    svc = TabService(base=tmp_path / "wadi", port=_free_port(), python=sys.executable)
    cmd = svc.app_command()
    assert cmd[2] == "tab" and "--listen" not in cmd and cmd.count("--root") == 3
    assert cmd[cmd.index("--comfy-lorad-dir") + 1] == str(svc.lorad_dir)  # "copy to ComfyUI models/lorad"
    first = svc.start_app()
    assert first["running"] is False and first["starting"] is True
    assert svc.start_app()["starting"] is True  # a second click does not start a second app
    try:
        end = time.time() + 90
        while not svc.app_up() and time.time() < end:
            assert svc._proc.poll() is None, (svc.base / "tab.log").read_text()
            time.sleep(0.5)
        st = svc.status()
        assert st["running"] is True, (svc.base / "tab.log").read_text()
        page = httpx.get(svc.url, timeout=10)
        assert page.status_code == 200 and "WaDi trainer" in page.text
        assert (svc.base / "jobs" / "jobs.sqlite").is_file()  # the app's job store is where the routes read
    finally:
        svc._proc.terminate()
        svc._proc.wait(timeout=20)
