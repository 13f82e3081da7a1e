"""The pack proper: node list, extension, and the registrations ComfyUI needs during pack
loading (stock-LoraLoader adapter, ``lorad`` models folder, web route: routes added after
pack loading are never mounted).  Imported by ``comfy_entrypoint``."""

from __future__ import annotations

import logging
import os
import sys

import folder_paths

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



def make_model_folder() -> str | None:
    """Create ``models/lorad`` on first start (the docs send users there; an empty folder is a hint)."""
    folders = folder_paths.get_folder_paths(patching.FOLDER)
    if not folders:
        return None
    os.makedirs(folders[0], exist_ok=True)
    return folders[0]


def readable_error_names() -> int:
    """Name our exception types by package, not by ComfyUI's module name for the pack.

    ComfyUI imports the pack under its absolute path as module name, and its error reports print
    ``type.__module__ + "." + type.__qualname__``: ``/abs/path/custom_nodes/ComfyUI-WaDi.nodes.lorad_file.
    LoRaDReadError``.  Renamed here, once, to ``wadi_lorad.nodes.lorad_file.LoRaDReadError`` (the name the
    installed package has).  Returns how many types were renamed (0 when imported as ``wadi_lorad``).
    """
    root = __name__.rsplit(".nodes.", 1)[0]
    renamed = 0
    for name, module in list(sys.modules.items()):
        if root == "wadi_lorad" or module is None or not (name == root or name.startswith(root + ".")):
            continue
        for obj in list(vars(module).values()):
            if isinstance(obj, type) and issubclass(obj, BaseException) and obj.__module__ == name:
                obj.__module__ = "wadi_lorad" + name[len(root):]
                renamed += 1
    return renamed


patching.register_folder()
make_model_folder()
if adapter.register():
    log.info("WaDi: LoRaD adapter registered; the stock LoraLoader now loads .lorad.safetensors")
info.register_route()
routes_tab.register_routes()  # trainer sidebar: job list, start/stop (no Gradio import here)
readable_error_names()  # after the imports above: every module of ours that a node can raise from is loaded


class WaDiExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return list(NODES)
