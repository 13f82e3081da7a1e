"""A minimal stand-in for the ComfyUI surface the pack imports, used ONLY when no real
ComfyUI can be imported (CI).  It records schemas; it does not sample or patch models.

Real ComfyUI wins whenever ``COMFYUI_DIR`` is importable (see ``comfy_for_tests``).
"""

from __future__ import annotations

import sys
import types
from dataclasses import dataclass, field

import torch


def _mod(name: str, **attrs) -> types.ModuleType:
    m = types.ModuleType(name)
    m.__dict__.update(attrs)
    m.__fake__ = True
    return m


class _Input:
    def __init__(self, id, display_name=None, optional=False, tooltip=None, **kw):
        self.id, self.display_name, self.optional, self.tooltip = id, display_name, optional, tooltip
        self.default = kw.pop("default", None)
        self.options = kw.pop("options", None)
        self.min, self.max = kw.pop("min", None), kw.pop("max", None)
        self.extra = kw


class _Output:
    def __init__(self, id=None, display_name=None, tooltip=None, **kw):
        self.id, self.display_name, self.tooltip = id, display_name, tooltip


def _type(io_type: str):
    class T:
        pass

    T.io_type = io_type
    T.Input = type("Input", (_Input,), {"io_type": io_type})
    T.Output = type("Output", (_Output,), {"io_type": io_type})
    return T


@dataclass
class Schema:
    node_id: str
    display_name: str | None = None
    category: str = "sd"
    inputs: list = field(default_factory=list)
    outputs: list = field(default_factory=list)
    hidden: list | None = None
    description: str = ""
    is_output_node: bool = False


class ComfyNode:
    @classmethod
    def define_schema(cls) -> Schema:  # pragma: no cover - overridden
        raise NotImplementedError


class NodeOutput:
    def __init__(self, *args, ui=None, expand=None, block_execution=None):
        self.args, self.ui = args, ui

    @property
    def result(self):
        return self.args


class ComfyExtension:
    async def get_node_list(self):  # pragma: no cover - overridden
        raise NotImplementedError


def install() -> None:
    """Put the fake modules in sys.modules (no-op for names already importable)."""
    io = _mod("comfy_api.latest._io", Schema=Schema, ComfyNode=ComfyNode, NodeOutput=NodeOutput,
              Custom=_type)
    for name, t in [("Model", "MODEL"), ("Clip", "CLIP"), ("Vae", "VAE"), ("Latent", "LATENT"),
                    ("Conditioning", "CONDITIONING"), ("Image", "IMAGE"), ("Int", "INT"), ("Float", "FLOAT"),
                    ("String", "STRING"), ("Combo", "COMBO"), ("Boolean", "BOOLEAN")]:
        setattr(io, name, _type(t))
    latest = _mod("comfy_api.latest", io=io, ui=_mod("comfy_api.latest._ui"), ComfyExtension=ComfyExtension)

    class WeightAdapterBase:
        name: str

    def cast_to_device(t, device, dtype, copy=False):
        return t.to(device=device, dtype=dtype, copy=copy)

    class _MS:
        pass

    fake = {
        "comfy_api": _mod("comfy_api", latest=latest),
        "comfy_api.latest": latest,
        "comfy": _mod("comfy", __path__=[]),
        "comfy.weight_adapter": _mod("comfy.weight_adapter", WeightAdapterBase=WeightAdapterBase, adapters=[],
                                     adapter_maps={}),
        "comfy.model_management": _mod("comfy.model_management", cast_to_device=cast_to_device),
        "comfy.lora": _mod("comfy.lora"),
        "comfy.sd": _mod("comfy.sd"),
        "comfy.sample": _mod("comfy.sample"),
        "comfy.samplers": _mod("comfy.samplers"),
        "comfy.utils": _mod("comfy.utils"),
        "comfy.model_sampling": _mod("comfy.model_sampling", EPS=_MS, V_PREDICTION=type("V", (_MS,), {})),
        "comfy.patcher_extension": _mod("comfy.patcher_extension"),
        "folder_paths": _mod("folder_paths", folder_names_and_paths={"loras": ([], {".safetensors"})},
                             models_dir="/nonexistent/models", get_filename_list=lambda name: [],
                             get_output_directory=lambda: "/nonexistent/output",
                             get_full_path=lambda name, f: None, get_folder_paths=lambda name: []),
    }
    for name, mod in fake.items():
        sys.modules.setdefault(name, mod)
    for parent, child in [("comfy", "weight_adapter"), ("comfy", "model_management"), ("comfy", "lora"),
                          ("comfy", "sd"), ("comfy", "sample"), ("comfy", "samplers"), ("comfy", "utils"),
                          ("comfy", "model_sampling"), ("comfy", "patcher_extension")]:
        setattr(sys.modules[parent], child, sys.modules[f"{parent}.{child}"])


_ = torch  # the fake cast_to_device works on torch tensors
