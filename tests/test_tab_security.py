"""Trainer tab safety rails: loopback bind, path confinement (.., symlinks), upload limits, no shell."""

from __future__ import annotations

import ast
import io
import socket
from pathlib import Path

import pytest
from wadi_lorad.trainer.tab import security
from wadi_lorad.trainer.tab.security import LOOPBACK, PathNotAllowed, Roots, bind_host, check_upload

PKG = Path(__file__).resolve().parent.parent


def test_loopback_unless_listen_and_listen_warns():
    err = io.StringIO()
    assert bind_host(False, 7861, [Path("/r")], stream=err) == LOOPBACK == "127.0.0.1"
    assert err.getvalue() == ""
    assert bind_host(True, 7861, [Path("/r")], stream=err) == "0.0.0.0"
    assert "WARNING: --listen" in err.getvalue() and "7861" in err.getvalue() and "/r" in err.getvalue()


def test_cli_defaults_to_loopback():
    from wadi_lorad.trainer.cli import build_parser

    args = build_parser().parse_args(["tab"])
    assert args.listen is False and args.func.__module__.endswith("trainer.tab.cli")


def test_paths_inside_roots_only(tmp_path):
    root, other = tmp_path / "root", tmp_path / "other"
    (root / "data").mkdir(parents=True)
    other.mkdir()
    roots = Roots([root])
    assert roots.resolve("data/prompts.txt") == root.resolve() / "data" / "prompts.txt"
    assert roots.resolve(root / "new" / "dir") == root.resolve() / "new" / "dir"  # need not exist yet
    assert roots.resolve("data/../data/x") == root.resolve() / "data" / "x"
    for bad in ("../other/x", str(other / "x"), "/etc/passwd", "data/../../other"):
        with pytest.raises(PathNotAllowed, match="outside the allowed folders"):
            roots.resolve(bad, what="output.dir")
    with pytest.raises(PathNotAllowed, match="empty path"):
        roots.resolve("  ")
    with pytest.raises(PathNotAllowed, match="NUL"):
        roots.resolve("a\x00b")
    # a sibling whose name merely starts with the root's name is not inside it
    (tmp_path / "root2").mkdir()
    assert str(tmp_path / "root2" / "x") not in roots
    # several roots: a relative path is found in whichever root has it, else it goes to the first
    (other / "shipped").mkdir()
    both = Roots([root, other])
    assert both.resolve(other / "y") == other.resolve() / "y"
    assert both.resolve("shipped/teacher") == root.resolve() / "shipped" / "teacher"  # not there: first root
    assert both.resolve("shipped") == other.resolve() / "shipped"


def test_symlink_escapes_are_rejected(tmp_path):
    root, secret = tmp_path / "root", tmp_path / "secret"
    root.mkdir()
    secret.mkdir()
    (root / "link").symlink_to(secret, target_is_directory=True)
    (root / "filelink").symlink_to(secret / "key.txt")
    roots = Roots([root])
    with pytest.raises(PathNotAllowed, match="secret"):
        roots.resolve("link/key.txt")
    with pytest.raises(PathNotAllowed):
        roots.resolve("filelink")
    (root / "inner").mkdir()
    (root / "ok").symlink_to(root / "inner", target_is_directory=True)
    assert roots.resolve("ok/a") == root.resolve() / "inner" / "a"  # a link that stays inside is fine


def test_upload_size_limit(tmp_path):
    small, big = tmp_path / "s.yaml", tmp_path / "b.yaml"
    small.write_bytes(b"x" * 100)
    big.write_bytes(b"x" * 101)
    assert check_upload(small, max_bytes=100) == small
    with pytest.raises(ValueError, match="b.yaml is 101 bytes; the limit is 100 bytes"):
        check_upload(big, max_bytes=100)
    assert security.DEFAULT_MAX_UPLOAD_BYTES == 1 << 20


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_server_binds_loopback_and_rejects_oversized_uploads(tmp_path):
    """The real Gradio server: bound to 127.0.0.1 only, and its upload route enforces max_file_size."""
    import httpx
    from wadi_lorad.trainer.tab.app import Settings
    from wadi_lorad.trainer.tab.layout import build_app

    settings = Settings.create(roots=[tmp_path], max_upload_bytes=4096, default_devices="cpu")
    demo = build_app(settings, kinds={}, monitor=False)
    port = _free_port()
    demo.launch(server_name=bind_host(False, port, settings.roots.roots), server_port=port, prevent_thread_lock=True,
                quiet=True, max_file_size=settings.max_upload_bytes)
    try:
        base = f"http://127.0.0.1:{port}"
        assert httpx.get(base + "/", timeout=10).status_code == 200
        listening = {conn.split()[1] for conn in Path("/proc/net/tcp").read_text().splitlines()[1:]
                     if conn.split()[3] == "0A"}  # state LISTEN: local addresses
        assert f"0100007F:{port:04X}" in listening and f"00000000:{port:04X}" not in listening
        ok = httpx.post(base + "/gradio_api/upload", files={"files": ("a.yaml", b"x" * 1000)}, timeout=10)
        assert ok.status_code == 200, ok.text
        too_big = httpx.post(base + "/gradio_api/upload", files={"files": ("b.yaml", b"x" * 10_000)}, timeout=10)
        assert too_big.status_code == 413, too_big.text
    finally:
        demo.close()


def _calls(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            yield node


def test_no_shell_anywhere_in_the_tab_and_routes():
    """Every process start in the tab/job code takes an argument list; no shell=True, os.system or os.popen."""
    files = sorted((PKG / "trainer" / "tab").glob("*.py")) + sorted((PKG / "trainer" / "jobs").glob("*.py"))
    files += [p for p in (PKG / "nodes").glob("routes_tab*.py")]
    assert len(files) > 8
    for path in files:
        tree = ast.parse(path.read_text())
        for call in _calls(tree):
            name = ast.unparse(call.func)
            assert name not in ("os.system", "os.popen", "subprocess.getoutput", "subprocess.getstatusoutput"), \
                f"{path.name}:{call.lineno} {name}"
            for kw in call.keywords:
                assert not (kw.arg == "shell" and not (isinstance(kw.value, ast.Constant) and kw.value.value is False)), \
                    f"{path.name}:{call.lineno} shell="
            if name.startswith("subprocess.") and call.args:
                assert not isinstance(call.args[0], (ast.Constant, ast.JoinedStr)), \
                    f"{path.name}:{call.lineno}: a command string; use an argument list"


def test_tool_arguments_are_confined(tmp_path):
    import argparse

    from wadi_lorad.trainer.tab.tools import arg_specs, build_argv

    p = argparse.ArgumentParser()
    p.add_argument("file")
    p.add_argument("--model")
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--force", action="store_true")
    p.add_argument("--include", action="append")
    p.add_argument("--to", choices=["a", "b"])
    p.add_argument("-q", "--quiet", action="store_true")
    specs = arg_specs(p)
    assert [(s.dest, s.kind) for s in specs] == [("file", "path"), ("model", "path"), ("rank", "int"),
                                                 ("force", "checkbox"), ("include", "lines"), ("to", "dropdown")]
    roots = Roots([tmp_path])
    argv = build_argv(specs, ["x.lorad.safetensors", "", 4.0, True, "a.*\nb", "b"], roots)
    assert argv == [str(tmp_path.resolve() / "x.lorad.safetensors"), "--rank", "4", "--force",
                    "--include", "a.*", "--include", "b", "--to", "b"]
    with pytest.raises(PathNotAllowed):
        build_argv(specs, ["../x", "", 4, False, "", ""], roots)
    with pytest.raises(ValueError, match="file: required"):
        build_argv(specs, ["", "", 4, False, "", ""], roots)


def test_module_entry_point_parses_the_same_options(capsys):
    import pytest as _pytest
    from wadi_lorad.trainer.tab import cli

    with _pytest.raises(SystemExit) as e:
        cli.main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "--listen" in out and "--root" in out and "python -m wadi_lorad.trainer.tab" in out
    assert (PKG / "trainer" / "tab" / "__main__.py").is_file()
