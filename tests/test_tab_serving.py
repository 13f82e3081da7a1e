"""What the tab's web server hands out: a finished job's exports and images, never other files under its roots."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import pytest
from wadi_lorad.trainer.jobs.store import Job
from wadi_lorad.trainer.tab.security import PathNotAllowed, Roots

ASSETS = Path(__file__).resolve().parent.parent / "assets"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _paths(routes, prefix: str = "") -> set[str]:
    """Every route path of the server app, included routers and mounts expanded."""
    out = set()
    for r in routes:
        included = getattr(r, "original_router", None)  # fastapi's include_router (Gradio's /gradio_api)
        if included is not None:
            out |= _paths(included.routes, prefix + getattr(getattr(r, "include_context", None), "prefix", ""))
            continue
        sub = getattr(r, "routes", None) or getattr(getattr(r, "app", None), "routes", None)
        path = prefix + getattr(r, "path", "")
        out |= _paths(sub, path) if sub else {path}
    return out


def _finished_job(app, out: Path) -> Job:
    """A job of this app's store whose run exported a .lorad and a single file (as trainer/export.py logs them)."""
    out.mkdir(parents=True)
    (out / "student.lorad.safetensors").write_bytes(b"lorad-bytes")
    (out / "student-merged.safetensors").write_bytes(b"merged-bytes")
    (out / "merged").mkdir()  # a diffusers folder export: not a download
    recs = [{"event": "start", "step": 0}, {"event": "export", "kind": "student", "path": str(out / "student.lorad.safetensors")},
            {"event": "export", "kind": "single_file", "path": str(out / "student-merged.safetensors")},
            {"event": "export", "kind": "merged", "path": str(out / "merged")},
            {"event": "export", "kind": "evil", "path": "/etc/passwd"}, {"event": "done", "step": 3}]
    (out / "events.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    job = Job(id="20260101-000000-distill-abcdef", kind="distill", argv=["x"], job_dir=str(app.settings.jobs_dir / "j"),
              out_dir=str(out), status="finished", title="run", cwd=str(out.parent), ended=time.time())
    return app.store.add(job)


def test_only_job_artifacts_are_served(tmp_path):
    """Plant secrets under the root; the file route refuses them, the app's own job exports are offered."""
    import httpx
    from wadi_lorad.trainer.tab.app import Settings
    from wadi_lorad.trainer.tab.cli import launch_options
    from wadi_lorad.trainer.tab.layout import build_app

    root = tmp_path / "home"
    (root / ".ssh").mkdir(parents=True)
    secrets = [root / ".ssh" / "id_rsa", root / ".env"]
    secrets[0].write_text("-----BEGIN OPENSSH PRIVATE KEY----- fake\n")
    secrets[1].write_text("API_TOKEN=fake\n")
    settings = Settings.create(roots=[root], default_devices="cpu")
    demo = build_app(settings, kinds={}, monitor=False)
    app = demo.wadi_app
    secrets.append(app.store.path)  # jobs.sqlite
    job = _finished_job(app, root / "runs" / "a")
    port = _free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, **launch_options(settings))
    try:
        base = f"http://127.0.0.1:{port}"
        teacher = ASSETS / "tinyworld" / "teacher" / "model_index.json"
        for p in [*secrets, root / "runs" / "a" / "student.lorad.safetensors", *([teacher] if teacher.is_file() else [])]:
            for url in (f"{base}/gradio_api/file={p}", f"{base}/gradio_api/file/{p}", f"{base}/file={p}"):
                r = httpx.get(url, timeout=10)
                assert r.status_code in (403, 404), (url, r.status_code)
                assert b"fake" not in r.content and b"lorad-bytes" not in r.content
        # The exports of a job this app ran are what the page may hand out: files only, inside the roots.
        offered = app.downloads(job.id)
        assert sorted(p.name for p in offered) == ["student-merged.safetensors", "student.lorad.safetensors"]
        assert all(p.is_relative_to(app.results.served_folder()) for p in offered)
        assert sorted(p.read_bytes() for p in offered) == [b"lorad-bytes", b"merged-bytes"]
        routes = sorted(_paths(demo.server_app.routes))
        print("\nroutes served:", *routes, sep="\n  ")
        assert "/gradio_api/file={path_or_url:path}" in routes, routes
    finally:
        demo.close()


def test_assets_are_read_only_and_describe_says_so(tmp_path):
    assets = tmp_path / "pack" / "assets"
    (assets / "tinyworld" / "teacher").mkdir(parents=True)
    cwd = tmp_path / "work"
    cwd.mkdir()
    # Even a --root naming the assets folder (as the ComfyUI sidebar does) leaves it read-only.
    roots = Roots([cwd, assets], readonly=[assets])
    assert roots.base == cwd and roots.writable == [cwd]
    assert roots.resolve("assets/tinyworld/teacher") == (assets / "tinyworld" / "teacher").resolve()
    with pytest.raises(PathNotAllowed, match="read-only"):
        roots.resolve(assets / "tinyworld" / "run", what="output.dir", write=True)
    # A relative output never lands in assets/, even when the path starts with its name.
    assert roots.resolve("assets/tinyworld/run", write=True) == (cwd / "assets" / "tinyworld" / "run").resolve()
    assert "read-only: " + str(assets.resolve()) in roots.describe()


def test_tab_refuses_outputs_and_tool_writes_into_assets(tmp_path):
    from wadi_lorad.trainer.tab.app import ASSETS as PACK_ASSETS
    from wadi_lorad.trainer.tab.app import Settings
    from wadi_lorad.trainer.tab.tools import arg_specs, build_argv, lorad_parser, subcommands

    if not PACK_ASSETS.is_dir():
        pytest.skip("this build ships no assets/")
    settings = Settings.create(roots=[tmp_path, PACK_ASSETS], default_devices="cpu")
    assert settings.roots.readonly == [PACK_ASSETS.resolve()] and settings.roots.writable == [tmp_path.resolve()]
    merge = subcommands(lorad_parser())["merge"]
    specs = arg_specs(merge)
    values = {"base": "assets/tinyworld/teacher", "lorad": "x.lorad.safetensors", "out": str(PACK_ASSETS / "tinyworld" / "teacher")}
    argv_values = [values.get(s.dest, True if s.dest == "force" else None) for s in specs]
    with pytest.raises(PathNotAllowed, match="read-only"):
        build_argv(specs, argv_values, settings.roots)  # a forced merge over the shipped teacher


def test_help_says_which_roots_are_readable_and_writable():
    import argparse

    from wadi_lorad.trainer.tab.cli import add_arguments

    p = argparse.ArgumentParser()
    add_arguments(p)
    text = " ".join(p.format_help().split())
    assert "may read and write" in text and "assets/ folder is always readable and never writable" in text
    assert "No file under them is served by URL" in text


def test_wadi_tab_command_serves_no_root_file(tmp_path):
    """`wadi tab` itself (the CLI entry point, its launch options): a planted key is not served."""
    import os
    import subprocess
    import sys

    import httpx

    root = tmp_path / "home"
    (root / ".ssh").mkdir(parents=True)
    key = root / ".ssh" / "id_rsa"
    key.write_text("-----BEGIN OPENSSH PRIVATE KEY----- fake\n")
    port = _free_port()
    main = Path(__file__).resolve().parent.parent / "__main__.py"
    env = {k: v for k, v in os.environ.items() if k != "GRADIO_TEMP_DIR"}
    proc = subprocess.Popen([sys.executable, str(main), "tab", "--port", str(port), "--no-browser", "--root", str(root)],
                            cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        end, up = time.time() + 120, False
        while time.time() < end and not up and proc.poll() is None:
            try:
                up = httpx.get(f"http://127.0.0.1:{port}/", timeout=2).status_code == 200
            except httpx.HTTPError:
                time.sleep(0.5)
        assert up, proc.stdout.read() if proc.poll() is not None else "no answer"
        for p in (key, root / "outputs" / "tab" / "jobs" / "jobs.sqlite"):
            r = httpx.get(f"http://127.0.0.1:{port}/gradio_api/file={p}", timeout=10)
            assert r.status_code in (403, 404) and b"fake" not in r.content, (p, r.status_code)
    finally:
        proc.terminate()
        out = proc.communicate(timeout=30)[0]
    assert f"read/write: {root}" in out and (not ASSETS.is_dir() or f"read-only: {ASSETS}" in out), out
