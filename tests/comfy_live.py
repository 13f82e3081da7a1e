"""Helpers for the live ComfyUI tests: a tiny random SD1.5-architecture checkpoint, its
diffusers twin (the reference path), .lorad files, and a headless ComfyUI server.

The checkpoint: a 2-level UNet (model_channels 320, context_dim 768: ComfyUI detects
SD15), the full CLIP-L text encoder and the SD VAE, random init from a fixed seed
(ComfyUI's model detection reads these shapes).  UNet keys are renamed diffusers -> ldm with
ComfyUI's own ``comfy.utils.unet_to_diffusers`` map (ComfyUI is present in these tests).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import torch

COMFYUI_DIR = os.environ.get("COMFYUI_DIR")
COMFYUI_PYTHON = os.environ.get("COMFYUI_PYTHON", sys.executable)

# The ComfyUI view of the tiny UNet (what unet_to_diffusers reads).
UNET_CONFIG = {
    "num_res_blocks": [1, 1],
    "channel_mult": [1, 1],
    "transformer_depth": [1, 0],
    "transformer_depth_output": [1, 1, 0, 0],
    "transformer_depth_middle": 1,
    "model_channels": 320,
}
SCALE = 0.18215


def comfy_importable() -> str | None:
    """None if ComfyUI can be imported in this process, else the reason."""
    if not COMFYUI_DIR:
        return "COMFYUI_DIR is not set (path to a ComfyUI checkout, e.g. /work/comfyui)"
    if not Path(COMFYUI_DIR, "comfy", "lora.py").is_file():
        return f"COMFYUI_DIR={COMFYUI_DIR} is not a ComfyUI checkout"
    try:
        import torchvision  # noqa: F401  ComfyUI hard-imports it
    except ImportError:
        return "this python has no torchvision (run the live tests with COMFYUI_PYTHON's interpreter)"
    return None


def import_comfy():
    """Make ``comfy.*`` importable here (CPU mode) and return ``comfy``."""
    # First on sys.path: pytest may have put this checkout's parent there, and a checkout
    # folder named ``comfy`` (or our ``nodes`` package) would shadow ComfyUI's modules.
    # ComfyUI's ``comfy`` is a namespace package, so any regular package called ``comfy``
    # elsewhere on sys.path wins over it: drop such entries.
    sys.path[:] = [p for p in sys.path if not Path(p or ".", "comfy", "__init__.py").is_file()]
    if sys.path[0] != COMFYUI_DIR:
        sys.path.insert(0, COMFYUI_DIR)
    home = str(Path(COMFYUI_DIR).resolve())
    for name in ("comfy", "nodes", "utils"):
        mod = sys.modules.get(name)
        if mod is None:
            continue
        where = [getattr(mod, "__file__", None) or "", *list(getattr(mod, "__path__", []))]  # namespace pkgs: __path__
        if not any(str(Path(w).resolve()).startswith(home) for w in where if w):
            del sys.modules[name]
    import comfy.cli_args

    comfy.cli_args.args.cpu = True  # before model_management: no CUDA probing
    if not comfy.cli_args.args.base_directory:  # models/, output/ in a scratch folder: the ComfyUI tree stays as it is
        comfy.cli_args.args.base_directory = tempfile.mkdtemp(prefix="wadi-comfy-base-")
    import comfy.lora  # noqa: F401
    import comfy.model_management  # noqa: F401
    import comfy.sd  # noqa: F401
    import comfy.utils  # noqa: F401

    return comfy


def diffusers_unet(seed: int = 0):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=32,
        block_out_channels=(320, 320),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        layers_per_block=1,
        cross_attention_dim=768,
        attention_head_dim=8,
        norm_num_groups=32,
    )
    with torch.no_grad():  # diffusers zero-inits some output convs; give every weight signal
        for name, p in unet.named_parameters():
            if torch.count_nonzero(p) == 0 and name.endswith("weight"):
                p.normal_(0, 0.02)
    return unet.eval()


def clip_text(seed: int = 1):
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    cfg = CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_attention_heads=12, num_hidden_layers=12,
                         projection_dim=768, vocab_size=49408, max_position_embeddings=77, hidden_act="quick_gelu",
                         eos_token_id=49407, bos_token_id=49406)
    return CLIPTextModel(cfg).eval()


def sd_vae(seed: int = 2):
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(
        block_out_channels=(128, 256, 512, 512),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=2,
        latent_channels=4,
        sample_size=256,
    ).eval()


def ldm_of_diffusers() -> dict[str, str]:
    """diffusers UNet key -> ldm key (ComfyUI's map, plus the non-block weights it lists separately)."""
    import comfy.utils

    return dict(comfy.utils.unet_to_diffusers(UNET_CONFIG))


def build_checkpoint(path: Path, unet, clip, vae) -> None:
    from safetensors.torch import save_file

    m = ldm_of_diffusers()
    sd = {}
    missing = []
    for k, v in unet.state_dict().items():
        if k not in m:
            missing.append(k)
            continue
        sd["model.diffusion_model." + m[k]] = v.detach().to(torch.float16).contiguous()
    if missing:
        raise RuntimeError(f"unmapped diffusers UNet keys: {missing[:5]}")
    for k, v in clip.state_dict().items():
        sd["cond_stage_model.transformer." + k] = v.detach().to(torch.float16).contiguous()
    for k, v in vae.state_dict().items():
        sd["first_stage_model." + k] = v.detach().to(torch.float16).contiguous()
    save_file(sd, str(path))


def upcast_fp16_(*modules) -> None:
    """The reference uses exactly the fp16-rounded weights ComfyUI loads (then fp32 on CPU)."""
    with torch.no_grad():
        for mod in modules:
            for p in mod.parameters():
                p.copy_(p.to(torch.float16).float())


def tokenizer():
    from transformers import CLIPTokenizer

    d = Path(COMFYUI_DIR, "comfy", "sd1_tokenizer")
    return CLIPTokenizer(str(d / "vocab.json"), str(d / "merges.txt"), pad_token="<|endoftext|>")


def encode(clip, text: str) -> torch.Tensor:
    ids = tokenizer()(text, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    with torch.no_grad():
        return clip(ids).last_hidden_state


# -- the server -----------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


FOLDERS = ("custom_nodes", "output", "input", "user", "temp", "models/checkpoints", "models/loras", "models/lorad",
           "models/controlnet", "models/embeddings", "models/vae")


class Server:
    """ComfyUI from COMFYUI_DIR with ``--base-directory root`` (own models/output/custom_nodes; pack linked in)."""

    def __init__(self, root: Path, pack: Path, extra_args: tuple[str, ...] = (), folders: tuple[str, ...] = FOLDERS):
        self.root = root
        self.port = free_port()
        for d in ("custom_nodes", *folders):
            (root / d).mkdir(parents=True, exist_ok=True)
        link = root / "custom_nodes" / "ComfyUI-WaDi"
        if not link.exists():
            link.symlink_to(pack)
        self.log = open(root / "server.log", "w")
        self.proc = subprocess.Popen(
            [COMFYUI_PYTHON, str(Path(COMFYUI_DIR, "main.py")), "--cpu", "--listen", "127.0.0.1", "--port", str(self.port),
             "--base-directory", str(root), "--disable-auto-launch", *extra_args],
            cwd=root, stdout=self.log, stderr=subprocess.STDOUT,
        )
        self.wait_ready()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait_ready(self, timeout: float = 180) -> None:
        t0 = time.time()
        while time.time() - t0 < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ComfyUI exited: {self.read_log()[-3000:]}")
            try:
                self.get("/system_stats")
                return
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.5)
        raise TimeoutError(f"ComfyUI did not start in {timeout}s: {self.read_log()[-3000:]}")

    def read_log(self) -> str:
        if not self.log.closed:
            self.log.flush()
        return (self.root / "server.log").read_text(errors="replace")

    def get(self, path: str):
        with urllib.request.urlopen(self.url + path, timeout=30) as r:
            body = r.read()
        return json.loads(body) if body[:1] in (b"{", b"[") else body

    def post_prompt(self, prompt: dict) -> tuple[int, dict]:
        data = json.dumps({"prompt": prompt, "client_id": str(uuid.uuid4())}).encode()
        req = urllib.request.Request(self.url + "/prompt", data=data, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    def run(self, prompt: dict, timeout: float = 600) -> dict:
        """Queue ``prompt`` and wait; returns its history entry (raises with the log on failure)."""
        status, body = self.post_prompt(prompt)
        if status != 200:
            raise RuntimeError(f"prompt rejected ({status}): {json.dumps(body)[:3000]}")
        pid = body["prompt_id"]
        t0 = time.time()
        while time.time() - t0 < timeout:
            hist = self.get(f"/history/{pid}")
            if pid in hist and hist[pid].get("status", {}).get("completed") is not None:
                if hist[pid]["status"].get("status_str") == "error" or not hist[pid]["status"]["completed"]:
                    return hist[pid]
                return hist[pid]
            time.sleep(0.2)
        raise TimeoutError(f"prompt {pid} did not finish: {self.read_log()[-3000:]}")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


def output_file(server: Server, entry: dict, node: str, kind: str = "images") -> Path:
    item = entry["outputs"][node][kind][0]
    return server.root / "output" / item.get("subfolder", "") / item["filename"]


def copy_into(src: Path, dst_dir: Path, name: str | None = None) -> Path:
    dst = dst_dir / (name or src.name)
    if not dst.exists():
        shutil.copy(src, dst)
    return dst


# -- LoRaD files for the tiny model ---------------------------------------------------------------

def student_layers(unet, clip, seed: int = 3, scale: float = 0.4) -> dict[str, dict]:
    """Random LoRaD factors: every Linear in the UNet blocks, one 3x3 conv, one CLIP layer.

    Returns ``{file prefix: {"A", "B", "module": (root, diffusers module name)}}``.
    """
    from torch import nn
    from wadi_lorad.lorad import functional

    g = torch.Generator().manual_seed(seed)
    m = ldm_of_diffusers()
    out = {}
    rank = 4
    for name, mod in unet.named_modules():
        if not name.startswith(("down_blocks", "mid_block", "up_blocks")):
            continue
        is_conv = isinstance(mod, nn.Conv2d) and name == "down_blocks.0.resnets.0.conv1"
        if not (isinstance(mod, nn.Linear) or is_conv):
            continue
        pairs = functional.pair_width(mod.weight.shape) // 2
        a = torch.randn(mod.weight.shape[0], rank, generator=g) * scale
        b = torch.randn(rank, pairs, generator=g) * scale
        out["diffusion_model." + m[name + ".weight"][: -len(".weight")]] = {"A": a, "B": b, "module": ("unet", name)}
    te = "encoder.layers.0.self_attn.q_proj"  # transformers 5 drops the ``text_model.`` level
    mod = clip.get_submodule(te)
    out["text_encoders.clip_l.transformer.text_model." + te] = {
        "A": torch.randn(mod.weight.shape[0], rank, generator=g) * scale,
        "B": torch.randn(rank, mod.weight.shape[1] // 2, generator=g) * scale,
        "module": ("clip", te),
    }
    return out


STUDENT_STEP = {"timestep": 999, "alpha_bar_T": 0.0047, "prediction_type": "epsilon"}


def write_lorad(path: Path, layers: dict, unet, one_step: dict | None = STUDENT_STEP, arch: str = "sd15",
                title: str = "test student", force: bool = True) -> Path:
    """Write with ``lorad.io.save_lorad`` (the real format): the tiny UNet's layout is recorded."""
    from wadi_lorad.lorad import io as lorad_io
    from wadi_lorad.lorad import keymap

    md = lorad_io.build_metadata(arch=arch, rank=4, target_preset="paper-student", title=title, one_step=one_step,
                            provenance={"seed": 3, "note": "random factors for tests"},
                            layout=json.dumps(keymap.layout_of(unet.config, "unet"), sort_keys=True))
    clean = {k: {n: v for n, v in parts.items() if n in ("A", "B", "theta")} for k, parts in layers.items()}
    return lorad_io.save_lorad(path, clean, md, force=force)


def rotate_reference_(layers: dict, unet, clip, strength: float = 1.0) -> None:
    """Apply the file to the diffusers models exactly as the trainer merges (lorad.functional.rotate)."""
    from wadi_lorad.lorad import functional

    roots = {"unet": unet, "clip": clip}
    with torch.no_grad():
        for parts in layers.values():
            root, name = parts["module"]
            w = roots[root].get_submodule(name).weight
            w.copy_(functional.rotate(w, functional.angles(parts["A"], parts["B"]), strength))


def reference_latent(unet, clip, prompt: str, seed: int, shape, timesteps=(999,), alpha_bar_first=None,
                     start_latent=None) -> torch.Tensor:
    """The diffusers path (``wadi sample``): ``lorad.onestep.generate`` with the diffusers UNet.

    Same noise as ComfyUI (CPU ``torch.randn`` from the seed); returns ComfyUI's latent
    convention (x0 / 0.18215).  ``start_latent`` is in ComfyUI's convention too.
    """
    from wadi_lorad.lorad.onestep import generate, scaled_linear_alphas_cumprod

    noise = torch.randn(shape, generator=torch.manual_seed(seed), device="cpu")
    renoise = None
    if len(timesteps) > 1:  # `wadi sample`'s re-noising, written out: CPU randn from seed + 10000 * i before step i+1
        renoise = [torch.randn(shape, generator=torch.Generator().manual_seed(seed + 10_000 * i))
                   for i in range(1, len(timesteps))]
    ctx = encode(clip, prompt)
    with torch.no_grad():
        x0 = generate(
            lambda x, t: unet(x, t, encoder_hidden_states=ctx).sample,
            noise, scaled_linear_alphas_cumprod(), list(timesteps), alpha_bar_first, renoise=renoise,
            start_latent=None if start_latent is None else start_latent * SCALE,
        )
    return x0 / SCALE


def load_latent(path: Path) -> torch.Tensor:
    from safetensors.torch import load_file

    return load_file(str(path))["latent_tensor"].float()


def controlnet_to_ldm(sd: dict) -> dict:
    """diffusers ControlNetModel state dict -> ldm ``control_model.*`` keys (what ComfyUI detects).

    The UNet-shaped part uses ComfyUI's UNet map; the hint encoder is conv_in, SiLU, then
    (conv, SiLU) pairs, then conv_out: ldm indices 0, 2, 4, ... 14.
    """
    m = ldm_of_diffusers()
    out = {}
    for k, v in sd.items():
        if k in m:
            new = m[k]
        elif k.startswith("controlnet_cond_embedding."):
            rest = k[len("controlnet_cond_embedding."):]
            part, _, leaf = rest.rpartition(".")
            if part == "conv_in":
                idx = 0
            elif part == "conv_out":
                idx = 14
            else:
                idx = 2 * (int(part.split(".")[1]) + 1)
            new = f"input_hint_block.{idx}.{leaf}"
        elif k.startswith("controlnet_down_blocks."):
            i, leaf = k.split(".")[1], k.split(".")[-1]
            new = f"zero_convs.{i}.0.{leaf}"
        elif k.startswith("controlnet_mid_block."):
            new = f"middle_block_out.0.{k.split('.')[-1]}"
        else:
            raise KeyError(f"unmapped ControlNet key {k}")
        out["control_model." + new] = v.detach().contiguous()
    return out


def require_comfy(reason: str) -> None:
    """Skip (``reason``) without COMFYUI_DIR; with it, fail loudly unless the real ComfyUI imports
    here, then import it and set it up for in-process tests."""
    import pytest

    if not os.environ.get("COMFYUI_DIR"):
        pytest.skip(f"COMFYUI_DIR is not set: {reason}")
    why = comfy_importable()
    if why:
        pytest.fail(f"COMFYUI_DIR is set but ComfyUI cannot be imported here: {why}")
    import_comfy()
    import comfy_env

    comfy_env.comfy_for_tests()
