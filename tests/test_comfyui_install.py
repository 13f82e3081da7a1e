"""Installing the pack into ComfyUI's environment changes none of ComfyUI's packages.

Runs pip for real (``--dry-run --report``: nothing is written) in ComfyUI's own interpreter (``COMFY_PY``),
the way ComfyUI-Manager installs a pack (``pip install -r requirements.txt``) and by the install recipe in
README.md and docs/comfyui.md, run line by line as the docs show it.  The torch-pin recipe is also run in a
throwaway venv over ComfyUI's packages whose torch reports a local version label (``2.14.1+cu130``, as CUDA
builds do), where the recipe used to end in ``ResolutionImpossible``.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
COMFY_PY = os.environ.get("COMFY_PY") or os.environ.get("COMFYUI_PYTHON")
pytestmark = [pytest.mark.comfyui,
              pytest.mark.skipif(not COMFY_PY, reason="set COMFY_PY to the python of a ComfyUI environment")]


def run(argv, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=600, **kw)


def freeze(python: str) -> dict[str, str]:
    out = run([python, "-m", "pip", "freeze", "--all"]).stdout
    pins = (line.split("==") for line in out.splitlines() if "==" in line)
    return {name.lower().replace("_", "-"): version for name, version in pins}


def install_recipe(doc: Path) -> list[str]:
    """The shell lines of the first code block under the doc's install heading, as a user types them."""
    text = doc.read_text(encoding="utf-8")
    start = text.index("## ComfyUI\n") if doc.name == "README.md" else text.index("## Install\n")
    block = re.search(r"```bash\n(.*?)```", text[start:], re.S).group(1)
    lines = [line.split("   #")[0].strip() for line in block.splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


def run_recipe(lines: list[str], python: str, work: Path) -> dict:
    """Run ``lines`` with ``python`` first on PATH in a fresh custom_nodes folder; pip only reports."""
    nodes = work / "ComfyUI" / "custom_nodes"
    nodes.mkdir(parents=True)
    (work / "bin").mkdir()
    shim = work / "bin" / "python"  # a wrapper, not a symlink: a venv's python finds its pyvenv.cfg by its own path
    shim.write_text(f'#!/bin/sh\nexec "{python}" "$@"\n')
    shim.chmod(0o755)
    report = work / "report.json"
    script = []
    for line in lines:
        if line.startswith("cd ComfyUI/custom_nodes"):
            script.append(f"cd {nodes}")
        elif line.startswith("git clone"):  # this checkout stands in for the clone
            script.append(f"ln -s {ROOT} ComfyUI-WaDi")
        elif " pip install " in line:
            script.append(f"{line} --dry-run --report {report} --disable-pip-version-check")
        else:
            script.append(line)
    env = {**os.environ, "PATH": f"{work / 'bin'}:{os.environ['PATH']}", "PYTHONNOUSERSITE": "1"}
    done = run(["bash", "-euo", "pipefail", "-c", "\n".join(script)], env=env, cwd=work)
    assert done.returncode == 0, f"recipe failed:\n{chr(10).join(script)}\n{done.stdout[-3000:]}{done.stderr[-3000:]}"
    assert report.is_file(), "the recipe never ran pip install"
    return {"report": json.loads(report.read_text()), "keep": (nodes / "keep-torch.txt").read_text().strip()}


def changed(report: dict, present: dict[str, str]) -> list[str]:
    return [f"{item['metadata']['name']} {present.get(item['metadata']['name'].lower().replace('_', '-'))} -> "
            f"{item['metadata']['version']}" for item in report["install"]]


def test_requirements_install_nothing_into_comfyui():
    """ComfyUI-Manager's way: every requirement of the nodes is already in ComfyUI's environment."""
    before = freeze(COMFY_PY)
    done = run([COMFY_PY, "-m", "pip", "install", "--dry-run", "--report", "-", "-q", "--disable-pip-version-check",
                "-r", str(ROOT / "requirements.txt")])
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout)
    assert changed(report, before) == []
    assert freeze(COMFY_PY) == before


@pytest.mark.parametrize("doc", ["README.md", "docs/comfyui.md"])
def test_documented_recipe_installs_nothing_into_comfyui(doc, tmp_path):
    lines = install_recipe(ROOT / doc)
    assert any(" pip install " in line for line in lines), lines
    before = freeze(COMFY_PY)
    out = run_recipe(lines, COMFY_PY, tmp_path)
    assert changed(out["report"], before) == []
    assert out["keep"] == f"torch=={before['torch'].split('+')[0]}"


def test_recipe_with_a_local_torch_label(tmp_path):
    """A CUDA torch reports 2.14.1+cu130: the pin the recipe writes still matches it, nothing is installed."""
    base = run([COMFY_PY, "-c", "import sys; print(sys._base_executable)"]).stdout.strip()
    comfy_site = run([COMFY_PY, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip()
    venv = tmp_path / "venv"
    assert run([base, "-m", "venv", "--without-pip", str(venv)]).returncode == 0
    py = str(venv / "bin" / "python")
    site = Path(run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip())
    (site / "_comfyui.pth").write_text(f"import site; site.addsitedir({comfy_site!r})\n")  # ComfyUI's packages, pip too
    version = "2.14.1+cu130"  # shadows ComfyUI's torch for pip and for `import torch`
    (site / "torch").mkdir()
    (site / "torch" / "__init__.py").write_text(f"__version__ = {version!r}\n")
    info = site / f"torch-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: torch\nVersion: {version}\n")
    (info / "RECORD").write_text("")
    assert run([py, "-c", "import torch; print(torch.__version__)"]).stdout.strip() == version

    out = run_recipe(install_recipe(ROOT / "README.md"), py, tmp_path / "work")
    assert out["keep"] == "torch==2.14.1"
    assert changed(out["report"], freeze(py)) == []


def test_required_comfyui_test_may_not_skip(tmp_path):
    """tests/conftest.py: with WADI_REQUIRE_COMFYUI=1 a skipped ``comfyui`` test is a failure, not a skip."""
    env = {k: v for k, v in os.environ.items() if k not in ("COMFYUI_DIR", "COMFY_PY", "COMFYUI_PYTHON", "CI")}
    argv = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_keymap_comfyui.py", "-k", "sd15"]
    skipped = run(argv, env={**env, "WADI_REQUIRE_COMFYUI": "0"}, cwd=ROOT)
    n_skipped = re.search(r"(\d+) skipped", skipped.stdout)
    assert skipped.returncode == 0 and n_skipped and int(n_skipped.group(1)) >= 1, skipped.stdout[-2000:]
    required = run(argv, env={**env, "WADI_REQUIRE_COMFYUI": "1"}, cwd=ROOT)
    assert required.returncode != 0 and "WADI_REQUIRE_COMFYUI=1 requires every ComfyUI test to run" in required.stdout
    assert "skipped" not in required.stdout.splitlines()[-1], required.stdout[-2000:]
    in_ci = run(argv, env={**env, "CI": "true"}, cwd=ROOT)  # CI=true alone requires them too
    assert in_ci.returncode != 0 and "WADI_REQUIRE_COMFYUI=1 requires" in in_ci.stdout
