"""The one import of ComfyUI's V3 node API (``comfy_api.latest``, what core's comfy_extras use)."""

from comfy_api.latest import ComfyExtension, io, ui

# A socket type of our own: the one-step settings read from a WaDi student's metadata.
OneStepType = io.Custom("WADI_ONESTEP")

CATEGORY = "WaDi"

__all__ = ["ComfyExtension", "io", "ui", "OneStepType", "CATEGORY"]
