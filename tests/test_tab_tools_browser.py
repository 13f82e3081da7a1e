"""Analyze and Files tabs in the browser: forms built from the lorad CLI's parsers, real runs, plots shown."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).parent))
import tab_browser as tb  # noqa: E402
from wadi_lorad.lorad.io import build_metadata, save_lorad  # noqa: E402
from wadi_lorad.trainer.tab.app import Settings, TabApp  # noqa: E402
from wadi_lorad.trainer.tab.layout import blocks  # noqa: E402
from wadi_lorad.trainer.tab.tools import arg_specs, build_argv, lorad_parser, run_tool, subcommands  # noqa: E402

pytestmark = pytest.mark.skipif(tb.skip_reason() is not None, reason=tb.skip_reason() or "")

KEY = "diffusion_model.input_blocks.1.1.transformer_blocks.0.attn1.to_q"  # an SD1.5 layer (320 x 320)


def _inputs(root: Path) -> None:
    g = torch.Generator().manual_seed(0)
    save_lorad(root / "tiny.lorad.safetensors",
               {KEY: {"A": torch.randn(320, 4, generator=g), "B": torch.randn(4, 160, generator=g)}},
               build_metadata(arch="sd15", rank=4, target_preset="custom", title="tiny"))
    te = {"blk.attn.to_q.weight": torch.randn(16, 24, generator=g), "blk.ff.weight": torch.randn(32, 16, generator=g)}
    save_file(te, root / "teacher.safetensors")
    save_file({k: v + 0.05 * torch.randn(v.shape, generator=g) for k, v in te.items()}, root / "student.safetensors")


def test_tool_runs_through_the_cli_subprocess(tmp_path):
    _inputs(tmp_path)
    specs = arg_specs(subcommands(lorad_parser())["inspect"])
    from wadi_lorad.trainer.tab.security import Roots

    argv = build_argv(specs, ["tiny.lorad.safetensors", False, True], Roots([tmp_path]))
    rc, out = run_tool("inspect", argv, tmp_path)
    assert rc == 0 and "totals: 1 layers" in out, out
    rc, out = run_tool("inspect", [str(tmp_path / "nope.lorad.safetensors")], tmp_path)
    assert rc == 1 and "nope.lorad.safetensors" in out


def test_browser_analyze_and_inspect(tmp_path):
    from playwright.sync_api import sync_playwright

    _inputs(tmp_path)
    app = TabApp(Settings.create(roots=[tmp_path], default_devices="cpu"), kinds={})
    demo = blocks(app)
    url = tb.launch(demo, tb.free_port())
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=tb.CHROMIUM, args=tb.FLAGS, headless=True)
            pg = tb.Page(browser.new_page(viewport={"width": 1300, "height": 1000}), tb.artifacts_dir("tab-tools"))
            page = pg.page
            page.goto(url)
            page.get_by_role("tab", name="Analyze").click()
            page.locator("#tool-analyze-student textarea, #tool-analyze-student input").first.fill("student.safetensors")
            page.locator("#tool-analyze-teacher textarea, #tool-analyze-teacher input").first.fill("teacher.safetensors")
            page.locator("#tool-analyze-outdir textarea, #tool-analyze-outdir input").first.fill("fig1")
            page.click("#tool-run-analyze")
            pg.wait("analyze to finish", lambda: "(exit 0)" in pg.value("tool-out-analyze"), timeout=120)
            pg.wait("the plots", lambda: page.locator("#tool-plots-analyze img").count() >= 2)
            assert (tmp_path / "fig1" / "norm_direction.png").is_file()
            pg.shot("analyze")
            # A path outside the roots is refused before anything runs.
            page.locator("#tool-analyze-outdir textarea, #tool-analyze-outdir input").first.fill("../elsewhere")
            page.click("#tool-run-analyze")
            pg.wait("the refusal", lambda: "outside the allowed folders" in pg.value("tool-out-analyze"))
            page.get_by_role("tab", name="Files").click()
            page.get_by_role("tab", name="inspect").click()
            page.locator("#tool-inspect-file textarea, #tool-inspect-file input").first.fill("tiny.lorad.safetensors")
            page.click("#tool-run-inspect")
            pg.wait("inspect output", lambda: "totals: 1 layers" in pg.value("tool-out-inspect"), timeout=120)
            pg.shot("inspect")
            browser.close()
    finally:
        demo.close()
