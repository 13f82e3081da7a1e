"""Helpers for the trainer tab's browser tests: Debian's chromium through Playwright, an app on a free port."""

from __future__ import annotations

import os
import re
import shutil
import socket
import time
from pathlib import Path

import pytest

CHROMIUM = os.environ.get("WADI_CHROMIUM", "/usr/bin/chromium")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ROOT = Path(__file__).resolve().parent.parent


def skip_reason() -> str | None:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed (pip install playwright==1.65.2)"
    if not (Path(CHROMIUM).is_file() or shutil.which(CHROMIUM)):
        return f"no chromium at {CHROMIUM} (apt-get install -y chromium, or set WADI_CHROMIUM)"
    return None


def artifacts_dir(name: str) -> Path:
    base = Path(os.environ.get("WADI_TEST_ARTIFACTS", ROOT / "outputs" / "test-artifacts"))
    out = base / name
    out.mkdir(parents=True, exist_ok=True)
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(demo, port: int) -> str:
    demo.queue().launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    return f"http://127.0.0.1:{port}/"


class Page:
    """A thin layer over a Playwright page with the waits these tests need."""

    def __init__(self, page, shots: Path):
        self.page, self.shots, self.n = page, shots, 0

    def shot(self, name: str) -> Path:
        self.n += 1
        path = self.shots / f"{self.n:02d}-{name}.png"
        self.page.screenshot(path=str(path), full_page=True)
        print(f"screenshot: {path}")
        return path

    def value(self, elem_id: str) -> str:
        return self.page.locator(f"#{elem_id} textarea, #{elem_id} input").first.input_value()

    def text(self, elem_id: str) -> str:
        return self.page.locator(f"#{elem_id}").inner_text()

    def wait(self, what: str, fn, timeout: float = 60.0, every: float = 0.25, progress=None):
        """Poll ``fn`` until it is true; fail after ``timeout`` s, or, with ``progress``, after ``timeout`` s
        in which ``progress()`` did not change (a job that keeps stepping on a loaded machine is not hung)."""
        end = time.time() + timeout
        last, seen = None, None
        while time.time() < end:
            try:
                last = fn()
                if last:
                    return last
                if progress is not None and (now := progress()) != seen:
                    seen, end = now, time.time() + timeout
            except Exception as e:  # an element being re-rendered; try again
                last = e
            self.page.wait_for_timeout(every * 1000)
        self.shot("timeout-" + re.sub(r"\W+", "-", what)[:40])
        pytest.fail(f"timed out waiting for {what}; last: {last!r}")

    def choose(self, elem_id: str, option: str) -> None:
        self.page.locator(f"#{elem_id} input").first.click()
        self.page.get_by_role("option", name=option, exact=True).click()

    def step(self, elem_id: str) -> tuple[int, int] | None:
        m = re.match(r"step (\d+) / (\d+)", self.value(elem_id))
        return (int(m.group(1)), int(m.group(2))) if m else None

    def image_src(self, elem_id: str) -> str | None:
        img = self.page.locator(f"#{elem_id} img")
        return img.first.get_attribute("src") if img.count() else None
