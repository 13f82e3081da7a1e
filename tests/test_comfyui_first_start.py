"""The pack in a fresh ComfyUI (a new ``--base-directory``, no models folders): what a user meets on first start.

``models/lorad`` is created, each web extension is served once (no "already registered" in the browser
console), an error names our exception type readably (not by ComfyUI's absolute-path module name), every
input and output of every node has a tooltip, and the display names are the ones the docs use.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import comfy_live
import pytest

pytestmark = [pytest.mark.comfyui, pytest.mark.slow]
_why = comfy_live.comfy_importable()
if _why:
    pytestmark.append(pytest.mark.skip(reason=_why))

ROOT = Path(__file__).resolve().parent.parent
OURS = {"WaDiLoadLoRaD", "WaDiCheckpointLoader", "WaDiSampler", "WaDiScaleCrafter", "WaDiLoRaDInfo"}


@pytest.fixture(scope="module")
def fresh(tmp_path_factory):
    root = tmp_path_factory.mktemp("comfy_fresh")
    (root / "models" / "loras").mkdir(parents=True)  # a damaged LoRaD among the LoRAs; no models/lorad yet
    (root / "models" / "loras" / "broken.lorad.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    assert not (root / "models" / "lorad").exists()
    srv = comfy_live.Server(root, ROOT, folders=("input", "output"))
    yield srv
    srv.stop()


def test_models_lorad_is_created_on_first_start(fresh):
    assert (fresh.root / "models" / "lorad").is_dir()


def test_each_web_extension_is_served_once(fresh):
    urls = fresh.get("/extensions")
    ours = [u for u in urls if u.rsplit("/", 1)[-1] in {p.name for p in (ROOT / "web").glob("*.js")}]
    assert sorted(u.rsplit("/", 1)[-1] for u in ours) == sorted(p.name for p in (ROOT / "web").glob("*.js")), urls
    log = fresh.read_log()
    ours = [line for line in log.splitlines() if "ComfyUI-WaDi" in line or "wadi" in line.lower()]
    assert not [line for line in ours if "IMPORT FAILED" in line or "(IMPORT FAILED)" in line], ours
    assert any("ComfyUI-WaDi" in line for line in ours), log[-3000:]  # the pack was loaded (import times list it)


def test_error_type_is_a_readable_name(fresh):
    entry = fresh.run({"1": {"class_type": "WaDiLoRaDInfo", "inputs": {"lorad_name": "loras/broken.lorad.safetensors"}}})
    errors = [m[1] for m in entry["status"]["messages"] if m[0] == "execution_error"]
    assert errors, entry["status"]
    kind = errors[0]["exception_type"]
    assert kind == "wadi_lorad.nodes.lorad_file.LoRaDReadError", kind
    assert "broken.lorad.safetensors" in errors[0]["exception_message"]


def test_every_input_and_output_has_a_tooltip(fresh):
    info = fresh.get("/object_info")
    missing = []
    for node in OURS:
        spec = info[node]
        for group in ("required", "optional"):
            for name, entry in (spec["input"].get(group) or {}).items():
                if not (len(entry) > 1 and entry[1].get("tooltip")):
                    missing.append(f"{node}.{name}")
        tips = spec.get("output_tooltips") or []
        missing += [f"{node} output {spec['output_name'][i]}" for i in range(len(spec["output"]))
                    if i >= len(tips) or not tips[i]]
    assert missing == []


def test_display_names_are_the_docs_names(fresh):
    info = fresh.get("/object_info")
    shown = {info[n]["display_name"] for n in OURS}
    for doc in ("README.md", "docs/comfyui.md"):
        text = (ROOT / doc).read_text(encoding="utf-8")
        table = text[text.index("| node |"):]
        table = table[: table.index("\n\n")]
        named = set(re.findall(r"^\| \*\*(.+?)\*\* \|", table, re.M))
        assert named == shown, (doc, named ^ shown)
    titles = {n["title"] for wf in (ROOT / "workflows").glob("*.json") for n in json.loads(wf.read_text())["nodes"]
              if n["type"] in OURS and n["title"] == n["type"]}
    assert titles == set()  # shipped workflows title our nodes by display name or a purpose, never the class id
