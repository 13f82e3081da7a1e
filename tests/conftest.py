"""Test set-up: import this checkout as ``wadi_lorad`` (never an installed copy)."""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("DIFFUSERS_OFFLINE", "1")

_spec = importlib.util.spec_from_file_location("_wadi_bootstrap", ROOT / "_bootstrap.py")
_boot = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_boot)
_boot.register()


@pytest.fixture(scope="module")
def bench_import() -> Iterator[Callable[[str], ModuleType]]:
    """``importlib.import_module`` with ``bench/`` on ``sys.path`` for one test module.

    The bench scripts import each other by plain name (``from tinyworld_ablation import ...``), so they
    need their folder on the path; it comes off again after the module so that their generic names
    (``models``, ``plot``) cannot shadow anything in later test modules.
    """
    bench = str(ROOT / "bench")
    sys.path.insert(0, bench)
    try:
        yield importlib.import_module
    finally:
        sys.path.remove(bench)


# Where a real ComfyUI is required (scripts/comfyui-tests.sh, i.e. `make test-comfyui`, and CI: .ci/run sets
# WADI_REQUIRE_COMFYUI=1, and any CI=true counts unless WADI_REQUIRE_COMFYUI=0), a ComfyUI test that skips has not
# tested anything: report it as a failure with the skip's reason.
REQUIRE_COMFYUI = os.environ.get("WADI_REQUIRE_COMFYUI", "1" if os.environ.get("CI") == "true" else "0") == "1"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if REQUIRE_COMFYUI and report.skipped and item.get_closest_marker("comfyui") is not None:
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"skipped, but WADI_REQUIRE_COMFYUI=1 requires every ComfyUI test to run (CI): {reason}"
