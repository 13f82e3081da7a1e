"""Load LoRaD and WaDi Checkpoint Loader nodes (thin: the work is in ``patching``)."""

from __future__ import annotations

import comfy.sd
import folder_paths

from . import patching
from .lorad_file import OneStep, summary_text
from .v3 import CATEGORY, OneStepType, io

LORAD_TIP = "a .lorad.safetensors from models/lorad, or one named *.lorad.safetensors under models/loras"
ONESTEP_TIP = "the file's one-step settings (timestep, alpha_bar_T, prediction type): connect to the WaDi Sampler"


def _strength(id_: str, tip: str) -> io.Float.Input:
    return io.Float.Input(id_, default=1.0, min=-10.0, max=10.0, step=0.01, tooltip=tip)


class WaDiLoadLoRaD(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="WaDiLoadLoRaD",
            display_name="Load LoRaD",
            category=CATEGORY,
            description="Rotate the model's (and CLIP's) weights by strength * theta from a .lorad.safetensors. "
            "Checks every key and shape first; a file for another model is refused and nothing is applied.",
            inputs=[
                io.Model.Input("model", tooltip="the model to rotate (a base checkpoint, or one already patched)"),
                io.Combo.Input("lorad_name", options=patching.list_files(), tooltip=LORAD_TIP),
                _strength("strength_model", "rotation strength on the diffusion model (0 = base)"),
                _strength("strength_clip", "rotation strength on the text encoder (if the file has one)"),
                io.Clip.Input("clip", optional=True,
                              tooltip="optional: the text encoder, rotated too where the file has text-encoder layers"),
            ],
            outputs=[
                io.Model.Output(display_name="MODEL", tooltip="the model rotated by the file"),
                io.Clip.Output(display_name="CLIP", tooltip="the text encoder, rotated where the file has its layers"),
                OneStepType.Output(display_name="ONESTEP", tooltip=ONESTEP_TIP),
            ],
        )

    @classmethod
    def execute(cls, model, lorad_name, strength_model, strength_clip, clip=None) -> io.NodeOutput:
        info = patching.load_info(lorad_name)
        new_model, new_clip, n_unet, n_te = patching.apply(info, model, clip, strength_model, strength_clip)
        text = f"{summary_text(info)}\npatched: {n_unet} model + {n_te} text-encoder layers"
        return io.NodeOutput(new_model, new_clip, info.onestep or OneStep(), ui={"text": [text]})


class WaDiCheckpointLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="WaDiCheckpointLoader",
            display_name="WaDi Checkpoint Loader",
            category=CATEGORY,
            description="Base checkpoint + WaDi student (.lorad) -> MODEL, CLIP, VAE and the one-step settings "
            "from the file's metadata (connect ONESTEP to the WaDi Sampler).",
            inputs=[
                io.Combo.Input("ckpt_name", options=folder_paths.get_filename_list("checkpoints"),
                               tooltip="the base checkpoint the student was distilled from (models/checkpoints)"),
                io.Combo.Input("lorad_name", options=patching.list_files(), tooltip="the WaDi student: " + LORAD_TIP),
                _strength("strength", "rotation strength (1 = the distilled student, 0 = base)"),
            ],
            outputs=[
                io.Model.Output(display_name="MODEL", tooltip="the base model rotated by the student"),
                io.Clip.Output(display_name="CLIP", tooltip="the text encoder (rotated where the file has its layers)"),
                io.Vae.Output(display_name="VAE", tooltip="the checkpoint's VAE"),
                OneStepType.Output(display_name="ONESTEP", tooltip=ONESTEP_TIP),
            ],
        )

    @classmethod
    def execute(cls, ckpt_name, lorad_name, strength) -> io.NodeOutput:
        info = patching.load_info(lorad_name)  # read + validate the small file before the big one
        ckpt = folder_paths.get_full_path_or_raise("checkpoints", ckpt_name)
        model, clip, vae = comfy.sd.load_checkpoint_guess_config(
            ckpt, output_vae=True, output_clip=True, embedding_directory=folder_paths.get_folder_paths("embeddings")
        )[:3]
        new_model, new_clip, n_unet, n_te = patching.apply(info, model, clip, strength, strength)
        text = f"{summary_text(info)}\npatched: {n_unet} model + {n_te} text-encoder layers"
        return io.NodeOutput(new_model, new_clip, vae, info.onestep or OneStep(), ui={"text": [text]})
