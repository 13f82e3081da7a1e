"""The pack as ComfyUI loads it, and its node schemas (real comfy_api if COMFYUI_DIR, else the fake)."""

from __future__ import annotations

import ast
import asyncio
import importlib.util
import sys
import types
from pathlib import Path

import comfy_env
import pytest

ROOT = Path(__file__).resolve().parent.parent
MODE = comfy_env.comfy_for_tests()

EXPECTED = {"WaDiLoadLoRaD", "WaDiCheckpointLoader", "WaDiSampler", "WaDiScaleCrafter", "WaDiLoRaDInfo"}


def load_like_comfyui(pack_dir: Path):
    """nodes.py load_custom_node: module name = the absolute path ('.' -> '_x_'), a package spec."""
    name = str(pack_dir).replace(".", "_x_")
    spec = importlib.util.spec_from_file_location(name, pack_dir / "__init__.py",
                                                  submodule_search_locations=[str(pack_dir)])
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


def test_pack_loads_from_any_folder_with_foreign_nodes_module(tmp_path, monkeypatch):
    folder = tmp_path / "custom_nodes" / "ComfyUI-WaDi.v0"
    folder.parent.mkdir()
    folder.symlink_to(ROOT, target_is_directory=True)
    foreign = types.ModuleType("nodes")
    foreign.NODE_CLASS_MAPPINGS = {"KSampler": object}
    monkeypatch.setitem(sys.modules, "nodes", foreign)  # ComfyUI's nodes.py is already imported
    for taken in ("lorad", "trainer"):
        monkeypatch.setitem(sys.modules, taken, types.ModuleType(taken))  # e.g. PyPI's `trainer`
    mod = load_like_comfyui(folder)
    assert mod.WEB_DIRECTORY == "./web" and (folder / "web").is_dir()
    assert not hasattr(mod, "NODE_CLASS_MAPPINGS")  # V1 would win over comfy_entrypoint
    ext = asyncio.run(mod.comfy_entrypoint())
    nodes = asyncio.run(ext.get_node_list())
    assert {n.define_schema().node_id for n in nodes} == EXPECTED
    assert sys.modules["nodes"] is foreign  # we never touched ComfyUI's module
    assert all(n.__module__.startswith(str(folder).replace(".", "_x_")) for n in nodes)


def _absolute_imports(path: Path) -> list[str]:
    bad = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            bad += [a.name for a in node.names if a.name.split(".")[0] in {"nodes", "lorad", "trainer", "wadi_lorad"}]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module.split(".")[0] in {"nodes", "lorad", "trainer", "wadi_lorad"}:
                bad.append(node.module)
    return bad


def test_pack_code_imports_only_relatively():
    files = [ROOT / "__init__.py", *sorted((ROOT / "nodes").glob("*.py"))]
    assert {f: _absolute_imports(f) for f in files if _absolute_imports(f)} == {}


def _schemas():
    from wadi_lorad.nodes import pack

    return {n.define_schema().node_id: n.define_schema() for n in pack.NODES}


def _inputs(schema):
    return {i.id: i for i in schema.inputs}


def _io_type(x) -> str:
    return x.io_type if isinstance(x.io_type, str) else x.get_io_type()


def test_node_schemas():
    s = _schemas()
    assert set(s) == EXPECTED
    assert all(x.category == "WaDi" and x.description for x in s.values())
    samp = _inputs(s["WaDiSampler"])
    assert {k: _io_type(v) for k, v in samp.items()} == {
        "model": "MODEL", "positive": "CONDITIONING", "latent_image": "LATENT", "seed": "INT", "steps": "INT",
        "cfg": "FLOAT", "denoise": "FLOAT", "negative": "CONDITIONING", "onestep": "WADI_ONESTEP", "timesteps": "STRING"}
    assert (samp["steps"].default, samp["steps"].min, samp["steps"].max) == (1, 1, 4)
    assert samp["cfg"].default == 1.0 and samp["denoise"].default == 1.0  # CFG off by default
    assert samp["negative"].optional and samp["onestep"].optional and samp["timesteps"].optional
    load = s["WaDiLoadLoRaD"]
    assert [_io_type(o) for o in load.outputs] == ["MODEL", "CLIP", "WADI_ONESTEP"]
    assert _inputs(load)["clip"].optional
    assert [_io_type(o) for o in s["WaDiCheckpointLoader"].outputs] == ["MODEL", "CLIP", "VAE", "WADI_ONESTEP"]
    assert [_io_type(o) for o in s["WaDiScaleCrafter"].outputs] == ["MODEL"]
    assert s["WaDiLoRaDInfo"].is_output_node


def test_every_input_and_output_has_a_tooltip():
    missing = [f"{nid}.{i.id}" for nid, x in _schemas().items() for i in x.inputs if not i.tooltip]
    missing += [f"{nid} output {o.display_name}" for nid, x in _schemas().items() for o in x.outputs if not o.tooltip]
    assert missing == []


def test_error_types_get_readable_names(tmp_path, monkeypatch):
    """Loaded the way ComfyUI does (module name = absolute path), our exception types are renamed by package."""
    folder = tmp_path / "custom_nodes" / "ComfyUI-WaDi"
    folder.parent.mkdir()
    folder.symlink_to(ROOT, target_is_directory=True)
    mod = load_like_comfyui(folder)
    asyncio.run(mod.comfy_entrypoint())
    prefix = mod.__name__
    lorad_file = sys.modules[prefix + ".nodes.lorad_file"]
    assert lorad_file.LoRaDReadError.__module__ == "wadi_lorad.nodes.lorad_file"
    # defined in lorad/file_checks.py, re-exported by lorad/io.py: one type, renamed where it is defined
    assert sys.modules[prefix + ".lorad.io"].LoRaDFileError is sys.modules[prefix + ".lorad.file_checks"].LoRaDFileError
    assert sys.modules[prefix + ".lorad.io"].LoRaDFileError.__module__ == "wadi_lorad.lorad.file_checks"
    from wadi_lorad.nodes import lorad_file as ours

    assert ours.LoRaDReadError.__module__ == "wadi_lorad.nodes.lorad_file"  # the package's own copy untouched


@pytest.mark.comfyui
@pytest.mark.skipif(MODE != "real", reason="needs a real comfy_api (COMFYUI_DIR) to build V1 info")
def test_schemas_pass_comfy_validation():
    from wadi_lorad.nodes import pack

    for n in pack.NODES:
        schema = n.GET_SCHEMA()
        schema.validate()
        info = schema.get_v1_info(n)
        assert info.category == "WaDi"


def test_web_extension_calls_the_route():
    js = (ROOT / "web" / "wadi_lorad_info.js").read_text()
    assert 'from "../../scripts/app.js"' in js and "/wadi/lorad_info" in js
    from wadi_lorad.nodes import info

    assert info.ROUTE == "/wadi/lorad_info"


def test_pyproject_registry_block():
    import tomllib

    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    comfy = data["tool"]["comfy"]
    assert comfy["PublisherId"] and comfy["DisplayName"] and "web" not in comfy  # WEB_DIRECTORY serves web/; both = every extension twice
    assert comfy["requires-comfyui"] == ">=0.3.47"  # the V3 loader (comfy_entrypoint) arrived in 0.3.47
    assert data["project"]["urls"]["Repository"] and "comfyui" not in data["project"]["name"].lower()


def test_docs_node_table_names_the_real_sockets():
    """docs/comfyui.md's node table: display name, input ids ((optional) ones in parentheses) and output names."""
    import re

    text = (ROOT / "docs" / "comfyui.md").read_text(encoding="utf-8")
    rows = re.findall(r"^\| \*\*(.+?)\*\* \| (.+?) -> (.+?) \|", text, re.M)
    by_name = {x.display_name: x for x in _schemas().values()}
    assert {r[0] for r in rows} == set(by_name)
    for name, ins, outs in rows:
        schema = by_name[name]
        documented = [re.sub(r" \(.*\)$", "", i.strip()) for i in ins.split(", ")]
        assert sorted(documented) == sorted(f"({i.id})" if i.optional else i.id for i in schema.inputs), name
        assert [o.strip() for o in outs.split(", ")] == [o.display_name for o in schema.outputs], name
