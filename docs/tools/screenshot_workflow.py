"""Screenshot a workflow in the real ComfyUI front-end with headless Chromium (for the docs).

    COMFYUI_DIR=/path/to/ComfyUI <ComfyUI's python> docs/tools/screenshot_workflow.py \
        workflows/wadi_onestep_txt2img.json docs/img/onestep_workflow.png [--run]

Starts ComfyUI on 127.0.0.1 with this pack and a random tiny SD1.5 checkpoint, opens the page in
``chromium --headless`` and drives it over the DevTools protocol (aiohttp websocket):
``app.loadGraphData(workflow)``, optionally queues it (``--run``) so the image shows, then
captures the page.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(ROOT / "tests"))
import comfy_live  # noqa: E402
import conftest  # noqa: E402,F401


async def cdp(ws_url: str, workflow: dict, run: bool, out: Path, width: int, height: int) -> None:
    import aiohttp

    async with aiohttp.ClientSession() as s, s.ws_connect(ws_url, max_msg_size=0) as ws:
        seq = 0

        async def call(method, **params):
            nonlocal seq
            seq += 1
            await ws.send_json({"id": seq, "method": method, "params": params})
            while True:
                msg = json.loads((await ws.receive()).data)
                if msg.get("id") == seq:
                    if "error" in msg:
                        raise RuntimeError(f"{method}: {msg['error']}")
                    return msg.get("result", {})

        async def js(expr):
            r = await call("Runtime.evaluate", expression=expr, awaitPromise=True, returnByValue=True)
            return r.get("result", {}).get("value")

        await call("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=False)
        for _ in range(120):  # wait for the app
            if await js("!!(window.LiteGraph && LiteGraph.registered_node_types['WaDiSampler'])"):
                break
            await asyncio.sleep(0.5)
        await asyncio.sleep(2)
        await js("document.querySelectorAll('.p-dialog-close-button').forEach(b => b.click())")
        # Frontend 1.27.10 quirk seen in this offline headless setup: the model-to-node store's
        # registered-types set is undefined, so every node with a ckpt_name/lora_name/vae_name combo
        # (core CheckpointLoaderSimple included) fails to construct.  An empty set = no asset browser.
        await js("(() => { const p = document.querySelector('#vue-app').__vue_app__.config.globalProperties.$pinia;"
                 " const st = p._s.get('modelToNode'); if (st && st.getRegisteredNodeTypes() === undefined)"
                 " { st.getRegisteredNodeTypes = () => new Set(); } return 1; })()")
        await js(f"window.app.loadGraphData({json.dumps(workflow)})")
        await asyncio.sleep(3)
        if run:
            await js("window.app.queuePrompt(0, 1)")
            await asyncio.sleep(1)
            for _ in range(600):
                if await js("fetch('/queue').then(r => r.json()).then(q => q.queue_running.length + q.queue_pending.length)") == 0:
                    break
                await asyncio.sleep(1)
            await asyncio.sleep(3)
        shot = await call("Page.captureScreenshot", format="png")
        out.write_bytes(base64.b64decode(shot["data"]))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("workflow", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--run", action="store_true", help="queue the workflow and wait for its result")
    ap.add_argument("--size", type=int, default=256, help="latent size used when running")
    args = ap.parse_args()
    why = comfy_live.comfy_importable()
    if why:
        print(why, file=sys.stderr)
        return 2
    comfy_live.import_comfy()
    wf = json.loads(args.workflow.read_text())
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for d in ("models/checkpoints", "models/lorad"):
            (root / d).mkdir(parents=True)
        unet, clip, vae = comfy_live.diffusers_unet(), comfy_live.clip_text(), comfy_live.sd_vae()
        names = {}
        for node in wf["nodes"]:  # use the workflow's own file names for the random stand-ins
            for v in node.get("widgets_values", []):
                if isinstance(v, str) and v.endswith(".safetensors"):
                    names[v] = "lorad" if v.endswith(".lorad.safetensors") else "checkpoints"
            if node["type"] == "EmptyLatentImage" and args.run:
                node["widgets_values"][:2] = [args.size, args.size]
        for name, kind in names.items():
            if kind == "checkpoints":
                comfy_live.build_checkpoint(root / "models/checkpoints" / name, unet, clip, vae)
            else:
                comfy_live.write_lorad(root / "models/lorad" / name, comfy_live.student_layers(unet, clip), unet,
                              title="random stand-in (screenshot)")
        settings = root / "user" / "default"
        settings.mkdir(parents=True)
        (settings / "comfy.settings.json").write_text(json.dumps({"Comfy.TutorialCompleted": True}))
        srv = comfy_live.Server(root, ROOT)
        port = comfy_live.free_port()
        browser = subprocess.Popen(["chromium", "--headless=new", "--no-sandbox", "--disable-gpu",
                                    f"--remote-debugging-port={port}", "--remote-debugging-address=127.0.0.1",
                                    "--user-data-dir=" + str(root / "chrome"), srv.url + "/"],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            for _ in range(60):
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/json", timeout=5) as r:
                        pages = [p for p in json.loads(r.read()) if p.get("type") == "page"]
                    if pages:
                        break
                except OSError:
                    pass
                time.sleep(0.5)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            asyncio.run(cdp(pages[0]["webSocketDebuggerUrl"], wf, args.run, args.out, 1600, 900))
            print(args.out)
        finally:
            browser.terminate()
            browser.wait(10)
            srv.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
