"""ComfyUI node pack (V3 API).  ComfyUI imports this during pack loading, via the root
``comfy_entrypoint``; that is also when the stock-LoraLoader adapter, the ``lorad``
models folder and the web route are registered (routes added later are never mounted).
"""

from __future__ import annotations

import logging

from . import adapter, info, patching
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


class WaDiExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return list(NODES)


async def comfy_entrypoint() -> WaDiExtension:
    return WaDiExtension()
