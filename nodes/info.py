"""LoRaD Info node and the ``/wadi/lorad_info`` route the web panel calls."""

from __future__ import annotations

import logging

from . import patching
from .lorad_file import LoRaDReadError, summary_text
from .v3 import CATEGORY, io

log = logging.getLogger("wadi")
ROUTE = "/wadi/lorad_info"


class WaDiLoRaDInfo(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="WaDiLoRaDInfo",
            display_name="LoRaD Info",
            category=CATEGORY,
            description="Show a .lorad file's metadata: rank, base architecture, one-step parameters, provenance.",
            inputs=[io.Combo.Input("lorad_name", options=patching.list_files(),
                                   tooltip="a .lorad.safetensors from models/lorad (or *.lorad.safetensors in "
                                   "models/loras)")],
            outputs=[io.String.Output(display_name="info", tooltip="the file's metadata as text")],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, lorad_name) -> io.NodeOutput:
        text = summary_text(patching.load_info(lorad_name))
        return io.NodeOutput(text, ui={"text": [text]})


def register_route() -> bool:
    """Add GET /wadi/lorad_info?name=... (must run at pack import: ComfyUI mounts routes after that)."""
    try:
        from aiohttp import web
        from server import PromptServer
    except ImportError:  # not inside a ComfyUI server process (tests, CLI)
        return False
    server = getattr(PromptServer, "instance", None)
    if server is None:
        return False
    if getattr(server, "_wadi_routes", False):
        return False

    @server.routes.get(ROUTE)
    async def lorad_info(request):
        name = request.rel_url.query.get("name", "")
        if name not in patching.list_files():
            return web.json_response({"error": f"unknown LoRaD file {name!r}"}, status=404)
        try:
            info = patching.load_info(name)
        except LoRaDReadError as e:
            return web.json_response({"error": str(e)}, status=400)
        return web.json_response({"summary": info.summary(), "text": summary_text(info)})

    server._wadi_routes = True
    return True
