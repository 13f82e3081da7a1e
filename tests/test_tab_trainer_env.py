"""The sidebar's Start button where the trainer's packages are missing (ComfyUI's own environment):
no process starts and the error names what is missing and the one command that adds it."""

from __future__ import annotations

import subprocess
import sys

import pytest
from fake_aiohttp import Routes, Web, call
from wadi_lorad.nodes import routes_tab
from wadi_lorad.nodes.routes_tab import TabService, add_routes


@pytest.fixture()
def bare_python(tmp_path):
    """This interpreter without its site-packages (-S): what ComfyUI's venv looks like to the trainer."""
    shim = tmp_path / "python"
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -S "$@"\n')
    shim.chmod(0o755)
    return str(shim)


def test_missing_modules_looks_them_up(bare_python):
    assert routes_tab.missing_modules(sys.executable) == []  # the project venv has the trainer
    assert routes_tab.missing_modules(bare_python) == list(routes_tab.TRAINER_MODULES)
    assert routes_tab.missing_modules("/nonexistent/python") == list(routes_tab.TRAINER_MODULES)


def test_start_without_trainer_packages_says_the_command(tmp_path, bare_python):
    svc = TabService(base=tmp_path / "wadi", port=1, python=bare_python)
    with pytest.raises(routes_tab.TrainerMissing) as err:
        svc.start_app()
    msg = str(err.value)
    assert "gradio, diffusers" in msg and routes_tab.SETUP_COMMAND in msg
    assert svc._proc is None and not (tmp_path / "wadi").exists()  # nothing started, nothing written

    # the route answers 409 with that message (the sidebar shows `error` under its Start button)
    routes = Routes()
    add_routes(routes, Web, svc)
    resp = call(routes, "POST", "/wadi/tab/start")
    assert resp["status"] == 409 and resp["data"]["error"] == msg


def test_setup_command_names_a_script_that_exists():
    script = routes_tab.SETUP_COMMAND.split('"')[1]
    assert subprocess.run(["bash", "-n", script]).returncode == 0


def test_trainer_python_prefers_the_override(monkeypatch, tmp_path):
    monkeypatch.setenv("WADI_TRAINER_PYTHON", str(tmp_path / "py"))
    assert routes_tab.trainer_python() == str(tmp_path / "py")
    assert TabService(base=tmp_path).python == str(tmp_path / "py")
