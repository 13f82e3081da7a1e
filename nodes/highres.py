"""WaDi ScaleCrafter node: re-dilate the UNet's deeper convolutions above the training resolution.

A ModelPatcher object patch per convolution (its ``_conv_forward``) plus a
diffusion-model wrapper that switches dilation on for timesteps >= ``above_t``;
the weights are untouched, so LoRaD/LoRA patches and lowvram keep working.
"""

from __future__ import annotations

import comfy.patcher_extension
import torch

from .redilate import Switch, dilation_factor, redilate_module, select_convs
from .v3 import CATEGORY, io

WRAPPER_KEY = "wadi_scalecrafter"


def scalecrafter(model, width: int, height: int, train_resolution: int, above_t: float, min_level: int):
    factor = dilation_factor(width, height, train_resolution)
    m = model.clone()
    if factor <= 1.0:
        return m, factor, 0
    unet = m.get_model_object("diffusion_model")
    cfg = m.model.model_config.unet_config
    if "channel_mult" not in cfg:
        raise ValueError("WaDi ScaleCrafter: needs a UNet model (SD1.x/SD2.x/SDXL); this model has no UNet levels")
    convs = [(n, c) for n, c in unet.named_modules() if isinstance(c, torch.nn.Conv2d)]
    names = select_convs(convs, cfg["channel_mult"], cfg["num_res_blocks"], min_level)
    switch = Switch(above_t)
    for name, fwd in redilate_module(unet, names, factor, switch).items():
        m.add_object_patch(f"diffusion_model.{name}._conv_forward", fwd)

    def wrapper(executor, x, timesteps, *args, **kwargs):
        switch.update(timesteps)
        return executor(x, timesteps, *args, **kwargs)

    m.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, WRAPPER_KEY, wrapper)
    return m, factor, len(names)


class WaDiScaleCrafter(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="WaDiScaleCrafter",
            display_name="WaDi ScaleCrafter",
            category=CATEGORY,
            description="Training-free high resolution (the paper's way): dilate the deeper 3x3 convolutions by "
            "target/training side ratio while t >= above_t, so a one-step student renders e.g. 1024px without repeats.",
            inputs=[
                io.Model.Input("model", tooltip="the model to render at high resolution (e.g. the WaDi student)"),
                io.Int.Input("width", default=1024, min=64, max=8192, step=8,
                             tooltip="target image width in pixels (the same as the Empty Latent Image's)"),
                io.Int.Input("height", default=1024, min=64, max=8192, step=8,
                             tooltip="target image height in pixels (the same as the Empty Latent Image's)"),
                io.Int.Input("train_resolution", default=512, min=64, max=4096, step=8,
                             tooltip="side the model was trained at (SD1.5: 512, SD2.1: 768, SDXL: 1024)"),
                io.Float.Input("above_t", default=700.0, min=0.0, max=1000.0, step=1.0,
                               tooltip="dilate while the timestep is >= this (a one-step student runs at 999)"),
                io.Int.Input("min_level", default=1, min=0, max=3,
                             tooltip="leave the outer (full-resolution) levels below this undilated"),
            ],
            outputs=[io.Model.Output(display_name="MODEL", tooltip="the model with re-dilated convolutions: "
                                     "connect to the sampler")],
        )

    @classmethod
    def execute(cls, model, width, height, train_resolution, above_t, min_level) -> io.NodeOutput:
        m, factor, n = scalecrafter(model, width, height, train_resolution, above_t, min_level)
        return io.NodeOutput(m, ui={"text": [f"dilation {factor:.3g} on {n} convolutions"]})
