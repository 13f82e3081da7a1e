"""The pack proper: node list, extension, and the registrations ComfyUI needs during pack
loading (stock-LoraLoader adapter, ``lorad`` models folder, web route: routes added after
pack loading are never mounted).  Imported by ``comfy_entrypoint``."""

from __future__ import annotations

import logging

from . import adapter, info, patching, routes_tab
from .highres import WaDiScaleCrafter
from .info import WaDiLoRaDInfo
from .loaders import WaDiCheckpointLoader, WaDiLoadLoRaD
from .sampler import WaDiSampler
from .v3 import ComfyExtension, io

log = logging.getLogger("wadi")

NODES: list[type[io.ComfyNode]] = [
    WaDiLoadLoRaD,
    WaDiCheckpointLoader,
    WaDiSampler,
    WaDiScaleCrafter,
    WaDiLoRaDInfo,
]

patching.register_folder()
if adapter.register():
    log.info("WaDi: LoRaD adapter registered; the stock LoraLoader now loads .lorad.safetensors")
info.register_route()
routes_tab.register_routes()  # trainer sidebar: job list, start/stop (no Gradio import here)


class WaDiExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return list(NODES)
