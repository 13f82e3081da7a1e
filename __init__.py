"""ComfyUI-WaDi: one-step image generation with LoRaD weight-direction adapters.

This file is what ComfyUI imports (under the pack folder's absolute path as module
name).  It stays free of side effects: the node classes are imported only when
ComfyUI calls ``comfy_entrypoint``, so the library (``lorad``) and the trainer can
be imported without ComfyUI installed.
"""

__version__ = "0.1.0"

# ComfyUI serves every *.js below this folder at /extensions/<pack folder>/.
WEB_DIRECTORY = "./web"


async def comfy_entrypoint():
    """ComfyUI V3 entry point: returns the pack's ComfyExtension."""
    from .nodes import comfy_entrypoint as _entry

    return await _entry()


__all__ = ["WEB_DIRECTORY", "comfy_entrypoint", "__version__"]
