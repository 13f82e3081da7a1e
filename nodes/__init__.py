"""ComfyUI nodes for WaDi / LoRaD (V3 API).

Importing this package needs no ComfyUI: the pure helpers (``resolve``, ``onestep_plan``,
``redilate``, ``lorad_file``) are usable and testable anywhere.  ComfyUI calls the root
``comfy_entrypoint`` while loading the pack; that imports :mod:`.pack`, which registers
the adapter, the models folder and the route, and returns the extension.
"""


async def comfy_entrypoint():
    from .pack import WaDiExtension

    return WaDiExtension()
