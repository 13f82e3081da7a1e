"""The ComfyUI sidebar tab's JS (web/wadi_trainer_tab.js) in chromium, against the real route payloads.

ComfyUI itself is not needed: Playwright serves stand-ins for ComfyUI's ``scripts/app.js``
(which records ``registerSidebarTab``) and ``scripts/api.js``, and answers ``/api/wadi/...``
with :class:`nodes.routes_tab.TabService` — the same code the aiohttp handlers call.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import tab_browser as tb  # noqa: E402
from wadi_lorad.nodes.routes_tab import TabService  # noqa: E402
from wadi_lorad.trainer.jobs.store import Job, JobStore  # noqa: E402

pytestmark = pytest.mark.skipif(tb.skip_reason() is not None, reason=tb.skip_reason() or "")

JS = tb.ROOT / "web" / "wadi_trainer_tab.js"
APP_STUB = """export const app = { exts: [], tabs: [],
  registerExtension(e) { this.exts.push(e); },
  extensionManager: { registerSidebarTab(t) { app.tabs.push(t); } } };"""
API_STUB = "export const api = { fetchApi: (path, opts) => fetch('/api' + path, opts) };"
PAGE = """<!doctype html><html><body><div id="root"></div><script type="module">
import { app } from "/scripts/app.js";
await import("/extensions/ComfyUI-WaDi/wadi_trainer_tab.js");
for (const e of app.exts) if (e.setup) e.setup();
window.tabInfo = app.tabs.map(t => ({ id: t.id, title: t.title, type: t.type }));
app.tabs[0].render(document.getElementById("root"));
</script></body></html>"""


def test_sidebar_tab_lists_jobs_starts_app_and_stops(tmp_path):
    from playwright.sync_api import sync_playwright

    svc = TabService(base=tmp_path / "wadi", port=65000)
    store = JobStore(svc.jobs_dir)
    evil = '<img src=x onerror="window.pwned=1">'
    store.add(Job(id="j-done", kind="distill", argv=[], job_dir=str(tmp_path / "d1"), out_dir=str(tmp_path / "o1"),
                  status="finished", message=evil))
    (tmp_path / "d2").mkdir()
    store.add(Job(id="j-run", kind="distill", argv=[], job_dir=str(tmp_path / "d2"), out_dir=str(tmp_path / "o2"),
                  status="running", pid=None, message="running"))
    state = {"up": False, "started": 0, "stopped": []}

    def handle(route):
        url, method = route.request.url, route.request.method
        path = url.split("://", 1)[1].split("/", 1)[1]
        body = None
        if path == "":
            return route.fulfill(body=PAGE, content_type="text/html")
        if path == "scripts/app.js":
            return route.fulfill(body=APP_STUB, content_type="text/javascript")
        if path == "scripts/api.js":
            return route.fulfill(body=API_STUB, content_type="text/javascript")
        if path == "extensions/ComfyUI-WaDi/wadi_trainer_tab.js":
            return route.fulfill(body=JS.read_text(), content_type="text/javascript")
        if path == "api/wadi/jobs":
            body = {"jobs": svc.jobs(), "app": {**svc.status(), "running": state["up"]}}
        elif path == "api/wadi/tab/start" and method == "POST":
            state["started"] += 1
            state["up"] = True  # (the real launcher is tested in test_tab_routes.py)
            body = svc.status()
        elif path.startswith("api/wadi/jobs/") and path.endswith("/stop") and method == "POST":
            job_id = path.split("/")[3]
            state["stopped"].append(job_id)
            body = svc.stop_job(job_id)
        if body is None:
            return route.fulfill(status=404, body="{}")
        return route.fulfill(body=json.dumps(body), content_type="application/json")

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=tb.CHROMIUM, args=tb.FLAGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 520, "height": 900})
            page.route("http://comfy.test/**", handle)
            page.route("http://127.0.0.1:65000/**", lambda r: r.fulfill(body="<h1>trainer app</h1>",
                                                                        content_type="text/html"))
            pg = tb.Page(page, tb.artifacts_dir("tab-comfy-sidebar"))
            page.goto("http://comfy.test/")
            page.wait_for_selector(".wadi-job")
            assert page.evaluate("window.tabInfo") == [{"id": "wadi-trainer", "title": "WaDi", "type": "custom"}]
            assert page.locator(".wadi-status").inner_text() == "trainer app not running"
            assert page.locator(".wadi-job").count() == 2
            assert evil in page.locator(".wadi-jobs").inner_text()  # shown as text ...
            assert page.evaluate("window.pwned") is None  # ... never run as HTML
            pg.shot("jobs")
            page.click(".wadi-start-app")
            pg.wait("the iframe", lambda: page.locator("iframe.wadi-frame").get_attribute("src")
                    == "http://127.0.0.1:65000/")
            assert state["started"] == 1
            assert page.frame_locator("iframe.wadi-frame").locator("h1").inner_text() == "trainer app"
            page.click(".wadi-stop")  # only the running job has one
            pg.wait("the stop to register", lambda: state["stopped"] == ["j-run"])
            pg.wait("the job to show stopping", lambda: "stopping" in page.locator(".wadi-jobs").inner_text())
            assert (tmp_path / "d2" / "STOP").exists()
            pg.shot("app-and-stopping")
        finally:
            browser.close()
