"""Every command shown in README.md and docs/*.md runs (docs as tests).

The commands are read from the documents' code blocks (``bash`` blocks and unlabelled
blocks; a line counts when it starts with a command word, so formulas stay out) and run
in bash, as written, in a temporary folder that holds what the docs assume:

* ``./sd15`` and ``./stable-diffusion-v1-5`` are the shipped tiny-world teacher,
  ``captions.txt`` tiny-world captions, ``my_dog/`` and ``exemplars/`` a few images;
* ``wadi``, ``lorad`` and ``python`` on ``PATH`` run this checkout (``-m wadi_lorad`` too).

Each documented command has exactly one entry in :data:`docs_plan.PLAN` (tests/docs_plan.py): run it (with small step
counts appended as overrides, which win over earlier values), check the options of a
usage synopsis or a benchmark against its ``--help`` (and run instances of a synopsis on
the tiny world's own student), point to the test that runs it (``wadi demo``: the slow
demo test), or skip it for a stated reason.
A command that appears in the docs without an entry fails :func:`test_every_documented_command_has_a_plan`.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from docs_plan import FT_SMALL, PLAN, RELATION_SMALL, Covered, Options, Run

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
COMMAND_WORDS = {"wadi", "lorad", "python", "make", "accelerate", "torchrun", "cd", "git", "bench/gpu/run.sh"}
TIMEOUT_S = 1800  # a hang guard only; nothing here depends on speed


def doc_commands() -> list[tuple[str, str]]:
    """``(document, command)`` for every command line of the docs' shell and plain code blocks."""
    out = []
    for doc in DOCS:
        text = doc.read_text(encoding="utf-8")
        for m in re.finditer(r"^```(\w*)\n(.*?)^```", text, re.S | re.M):
            if m.group(1) not in ("", "bash", "sh", "shell", "console"):
                continue
            block: list[str] = []
            for line in m.group(2).replace("\\\n", " ").splitlines():
                words = _strip_comment(line).split()
                first = next((w for w in words if not re.match(r"^[A-Z_]+=", w)), "")
                if first in COMMAND_WORDS or (words and re.match(r"^[A-Z_]+=", words[0]) and first):
                    block.append(" ".join(words))
                elif block and words and line[:1].isspace() and not m.group(1):
                    block[-1] += " " + " ".join(words)  # a synopsis wrapped onto an indented line
            out += [(doc.relative_to(ROOT).as_posix(), c) for c in block]
    return out


def _strip_comment(line: str) -> str:
    """The line without a trailing ``# comment`` (a ``#`` inside quotes stays)."""
    quote = None
    for i, ch in enumerate(line):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i]
    return line


def test_every_documented_command_has_a_plan():
    found = {c for _, c in doc_commands()}  # one entry serves a command shown twice
    missing = sorted(found - PLAN.keys())
    assert not missing, "documented commands that no test runs and the skip-list does not name:\n" + "\n".join(missing)
    stale = sorted(PLAN.keys() - found)
    assert not stale, "PLAN entries for commands the docs no longer show:\n" + "\n".join(stale)
    assert len(found) >= 40  # the extraction itself works (a broken regex would find nothing)


# -- the workspace ---------------------------------------------------------------------------------


def _shim(path: Path, body: str) -> None:
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(0o755)


class Workspace:
    def __init__(self, root: Path) -> None:
        self.dir = root
        bin_dir, site = root / ".bin", root / ".site"
        bin_dir.mkdir()
        site.mkdir()
        (site / "wadi_lorad").symlink_to(ROOT)  # ``python -m wadi_lorad`` imports this checkout
        py = shlex.quote(sys.executable)
        _shim(bin_dir / "python", f'exec {py} "$@"')
        _shim(bin_dir / "wadi", f'exec {py} -m wadi_lorad "$@"')
        _shim(bin_dir / "lorad", f'exec {py} -m wadi_lorad.lorad.cli "$@"')
        self.env = {**os.environ, "PATH": f"{bin_dir}:{Path(sys.executable).parent}:{os.environ.get('PATH', '')}",
                    "PYTHONPATH": str(site), "HOME": str(root / "home"), "OMP_NUM_THREADS": "1",
                    "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                    "DIFFUSERS_OFFLINE": "1", "ACCELERATE_USE_CPU": "1"}
        self.env.pop("WADI_STOP_FILE", None)  # a stop file of an enclosing job must not stop these runs
        (root / "home").mkdir()
        (root / "models").mkdir()
        teacher = ROOT / "assets" / "tinyworld" / "teacher"
        for name in ("sd15", "stable-diffusion-v1-5"):
            (root / name).symlink_to(teacher)
        for name in ("configs", "assets"):  # commands documented "from the pack's root" run as written
            (root / name).symlink_to(ROOT / name)
        from wadi_lorad.trainer.tinyworld import domain

        (root / "captions.txt").write_text("\n".join(domain.sample_captions(16, 0)) + "\n")
        for folder, seed in (("my_dog", 0), ("exemplars", 1)):
            self._images(root / folder, seed)

    @staticmethod
    def _images(folder: Path, seed: int) -> None:
        from PIL import Image
        from wadi_lorad.trainer.tinyworld import domain

        folder.mkdir()
        for i, caption in enumerate(domain.sample_captions(3, seed)):
            pixels = (domain.render(caption, seed=i, size=32).clip(0, 1) * 255).round().astype("uint8")
            Image.fromarray(pixels).save(folder / f"{i}.png")
            # Captions name the relation with the placeholder token (what `wadi relation` requires).
            (folder / f"{i}.txt").write_text((caption if folder.name == "my_dog" else "a shape <R> a shape") + "\n")

    def sh(self, cmd: str, check: bool = True) -> subprocess.CompletedProcess:
        r = subprocess.run(["bash", "-c", cmd], cwd=self.dir, env=self.env, capture_output=True, text=True,
                           timeout=TIMEOUT_S)
        if check:
            assert r.returncode == 0, f"`{cmd}` exited {r.returncode}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
        return r

    def need(self, what: str) -> None:
        """Steps that documented commands assume were done before (each made once)."""
        d = self.dir
        if what == "run.yaml" and not (d / "run.yaml").exists():
            self.run_plan("wadi distill --model.base ./sd15 --data.prompts captions.txt --save-config run.yaml")
        elif what == "student" and not (d / "outputs/distill/student.lorad.safetensors").exists():
            self.need("run.yaml")
            self.sh("wadi distill --config run.yaml --output.checkpoint_every 1")
        elif what == "tinyworld-quality" and not (d / "outputs/tinyworld-quality/student.lorad.safetensors").exists():
            self.run_plan("wadi distill --config configs/tinyworld-quality.yaml")  # the recipe's documented run
        elif what == "student.lorad.safetensors" and not (d / what).exists():
            self.need("student")
            shutil.copy(d / "outputs/distill/student.lorad.safetensors", d / what)
        elif what == "personal.lorad.safetensors" and not (d / what).exists():
            self.sh(f"wadi personalize --model.base ./sd15 --data.images my_dog --data.instance_prompt 'a sks dog' "
                    f"{FT_SMALL} --output.dir outputs/personal-need")
            shutil.copy(d / "outputs/personal-need/personal.lorad.safetensors", d / what)
        elif what == "relation" and not (d / "outputs/relation/painted_on.safetensors").exists():
            self.sh(f"wadi relation --model.base ./sd15 --data.images exemplars --output.name painted_on "
                    f"{RELATION_SMALL}")
        elif what in ("dmd2", "rotated"):
            self._merged_unet(what)

    def _merged_unet(self, what: str) -> None:
        """A base UNet with weights moved, in one file: what a distilled checkpoint looks like to analyze."""
        name = "dmd2_sd15_unet.safetensors" if what == "dmd2" else "rotated_unet-sdv1-5.safetensors"
        if (self.dir / name).exists():
            return
        import torch
        from safetensors.torch import load_file, save_file

        unet = self.dir / "sd15" / "unet"
        sd = {}
        for f in sorted(unet.glob("*.safetensors")):
            sd.update(load_file(str(f)))
        g = torch.Generator().manual_seed(0)
        if what == "dmd2":
            moved = {k: (v.float() + 0.01 * torch.randn(v.shape, generator=g)).to(v.dtype)
                     if v.ndim >= 2 else v for k, v in sd.items()}
        else:  # rotate each row's first column pair: a change LoRaD extraction recovers
            moved = {}
            for k, v in sd.items():
                if v.ndim == 2 and v.shape[1] >= 2 and k.endswith(".weight"):
                    w = v.float().clone()
                    c, s = torch.cos(torch.tensor(0.3)), torch.sin(torch.tensor(0.3))
                    a, b = w[:, 0].clone(), w[:, 1].clone()
                    w[:, 0], w[:, 1] = c * a - s * b, s * a + c * b
                    moved[k] = w.to(v.dtype)
                else:
                    moved[k] = v
        save_file({k: v.contiguous() for k, v in moved.items()}, str(self.dir / name))

    def run_plan(self, cmd: str) -> None:
        plan = PLAN[cmd]
        assert isinstance(plan, Run)
        for n in plan.needs:
            self.need(n)
        line = cmd
        for a, b in plan.replace:
            line = line.replace(a, b)
        port = _free_port()
        full = f"{line} {plan.extra}".format(port=port)
        if plan.server:
            self._serve(full, port)
        else:
            self.sh(full)
        for m in plan.makes:
            assert (self.dir / m).exists(), f"`{full}` did not write {m}"

    def _serve(self, cmd: str, port: int) -> None:
        proc = subprocess.Popen(["bash", "-c", f"exec {cmd}"], cwd=self.dir, env=self.env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, start_new_session=True)
        try:
            deadline = time.monotonic() + 300  # a hang guard: importing Gradio on a busy CPU
            while time.monotonic() < deadline:
                assert proc.poll() is None, f"`{cmd}` exited {proc.returncode}: {proc.stdout.read()[-3000:]}"
                try:
                    with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                        break
                except OSError:
                    time.sleep(0.5)
            else:
                pytest.fail(f"`{cmd}` never answered on port {port}")
            import urllib.request

            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=60) as resp:
                assert resp.status == 200
        finally:
            os.killpg(proc.pid, 15)
            proc.wait(timeout=60)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Workspace:
    return Workspace(tmp_path_factory.mktemp("docs"))


def _cases(kind):
    seen, out = set(), []
    for doc, cmd in doc_commands():
        if cmd in seen or not isinstance(PLAN.get(cmd), kind):
            continue
        seen.add(cmd)
        out.append(pytest.param(cmd, id=f"{doc}:{cmd[:60]}"))
    return out


@pytest.mark.parametrize("cmd", _cases(Run))
def test_documented_command_runs(cmd, workspace):
    workspace.run_plan(cmd)


@pytest.mark.parametrize("cmd", _cases(Options))
def test_documented_options_exist(cmd, workspace):
    plan = PLAN[cmd]
    helptext = workspace.sh(plan.help.format(root=shlex.quote(str(ROOT)))).stdout
    for opt in re.findall(r"(?<![\w-])(--[a-z][\w-]*)", cmd):
        assert opt in helptext, f"{cmd!r} shows {opt}, which `{plan.help}` does not accept"


def _examples():
    out = []
    for plan in PLAN.values():
        for cmd, needs in getattr(plan, "examples", ()):
            out.append(pytest.param(cmd, needs, id=cmd[:70]))
    return out


@pytest.mark.parametrize("cmd, needs", _examples())
def test_synopsis_example_runs(cmd, needs, workspace):
    for n in needs:
        workspace.need(n)
    workspace.sh(cmd)


@pytest.mark.parametrize("cmd", [c for c in PLAN if isinstance(PLAN[c], Covered) and PLAN[c].check])
def test_covered_command_target_exists(cmd, workspace):
    workspace.sh(PLAN[cmd].check.format(root=shlex.quote(str(ROOT))))


def test_wadi_eval_writes_its_results(workspace):
    """``wadi eval --out results.json`` (its own usage text) crashed on an import left by a refactor."""
    import json

    workspace.sh("wadi eval --mode noise --n 8 --seeds 0 --out results.json")
    res = json.loads((workspace.dir / "results.json").read_text())
    assert res["n_prompts"] == 8 and "noise" in res["rows"]


def test_docs_and_code_are_self_contained():
    """Nothing shipped cites the team's private notes (users never receive them)."""
    names = ("wadi-" + "facts", "comfyui-" + "facts", "../" + "shared")  # split: this file is scanned too
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    hits = []
    for rel in files:
        path = ROOT / rel
        if path.suffix not in (".py", ".md", ".js", ".sh", ".yaml", ".toml", ".txt") or not path.is_file():
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        hits += [f"{rel}: {n}" for n in names if n in text]
    assert hits == []
