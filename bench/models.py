"""UNets and adapter candidates shared by the bench scripts.

Candidates all adapt the SAME layers (the ``paper-student`` preset by default) at
the same rank over one frozen base:

* ``lorad``       - ours: :func:`lorad.inject.inject`, fused recompute-in-backward op;
* ``lorad-naive`` - ours with plain autograd through the rotation (``set_naive``);
* ``hook``        - the official code's mechanism, rewritten from its description
                    (the released code): parameters on the Linear plus a forward hook
                    that rebuilds W_rot and calls ``F.linear`` again, so every
                    adapted Linear is computed twice;
* ``lora`` / ``dora`` - PEFT LoRA / DoRA (alpha = r, dropout 0).

The base weights are never copied between candidates: :func:`share_base_copy`
deep-copies the module tree while reusing the frozen parameter tensors.
"""

from __future__ import annotations

import copy
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

ROOT = Path(__file__).resolve().parent.parent
TINY_TEACHER = ROOT / "assets" / "tinyworld" / "teacher"

# SD1.5's UNet config (diffusers UNet2DConditionModel); "lite" keeps the widths and
# cross-attention dim but one layer per block so a 2-core CPU can run fwd+bwd.
SD15 = dict(
    block_out_channels=(320, 640, 1280, 1280),
    layers_per_block=2,
    cross_attention_dim=768,
    attention_head_dim=8,
    sample_size=64,
    in_channels=4,
    out_channels=4,
)
UNET_CONFIGS: dict[str, dict] = {
    "sd15": SD15,
    "sd15-lite": {**SD15, "layers_per_block": 1},
    # SD1.5's structure (blocks, layers, cross-attention 768) at toy widths: smoke runs of the GPU script.
    "sd15-toy": {**SD15, "block_out_channels": (32, 64, 64, 64), "sample_size": 16},
}
# Full-size UNets of other families, from the configs stored with the library (lorad/archs).
ARCH_UNETS = ("sd21", "sdxl")


def unet_config(kind: str) -> dict:
    """The diffusers config of a bench UNet: :data:`UNET_CONFIGS` or a full-size arch of :data:`ARCH_UNETS`."""
    if kind in UNET_CONFIGS:
        return dict(UNET_CONFIGS[kind])
    if kind in ARCH_UNETS:
        from wadi_lorad.lorad.archs import load_config

        return {k: v for k, v in load_config(kind).items() if not k.startswith("_")}
    raise KeyError(f"unknown UNet {kind!r}; choose from {sorted(UNET_CONFIGS) + list(ARCH_UNETS)} or 'tiny'")
CANDIDATES = ("lorad", "lorad-naive", "hook", "lora", "dora")


def preload() -> None:
    """Import the heavy libraries a candidate may need, so a memory child's zero mark
    (taken after this) does not count import-time allocations against one candidate."""
    import importlib

    for mod in ("diffusers", "peft", "peft.tuners.lora", "wadi_lorad.trainer.step", "wadi_lorad.trainer.adapters"):
        try:
            importlib.import_module(mod)
        except ImportError:
            pass


def build_unet(kind: str, seed: int = 0, dtype: torch.dtype = torch.float32, device: str = "cpu") -> nn.Module:
    """A random-init UNet of an SD config, or the shipped tiny-world teacher (``tiny``)."""
    from diffusers import UNet2DConditionModel

    if kind == "tiny":
        folder = TINY_TEACHER / "unet"
        if not folder.is_dir():
            raise FileNotFoundError(f"tiny-world teacher not found at {folder}")
        unet = UNet2DConditionModel.from_pretrained(folder)
    else:
        unet_config(kind)  # unknown kinds fail here, before any work
        # fp32 builds are cached in fp32; a low-precision build of a model whose fp32 copy would not fit
        # (SDXL: 10.3 GB) is initialised and cached in that dtype directly.
        init_dtype = torch.float32 if kind in UNET_CONFIGS or dtype == torch.float32 else dtype
        unet = _random_unet(kind, seed, init_dtype)
    unet.requires_grad_(False)
    return unet.to(device=device, dtype=dtype).eval()


def _random_unet(kind: str, seed: int, dtype: torch.dtype = torch.float32) -> nn.Module:
    """Default-init random UNet, cached as safetensors (torch's init of 0.6-0.9B params takes ~20 s).

    The memory children of every script load the same weights from the cache, so all
    processes see one identical model.
    """
    from diffusers import UNet2DConditionModel
    from safetensors import safe_open
    from safetensors.torch import save_file

    cache = Path(os.environ.get("WADI_BENCH_CACHE", Path.home() / ".cache" / "wadi-bench"))
    tag = "" if dtype == torch.float32 else "-" + str(dtype).removeprefix("torch.")
    path = cache / f"unet-{kind}-seed{seed}{tag}.safetensors"
    config = unet_config(kind)
    if path.is_file():
        with torch.device("meta"):
            unet = UNet2DConditionModel(**config)
        # Copied out of the file mapping: tensors that stay file-backed would enter the resident set only
        # when first touched, inside a measured step, and a memory child would count weights as activations.
        with safe_open(str(path), "pt") as f:
            state = {k: f.get_tensor(k).clone() for k in f.keys()}  # noqa: SIM118 (safe_open is no dict)
        unet.load_state_dict(state, assign=True, strict=True)
        return unet
    torch.manual_seed(seed)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # torch's own init, straight in the target dtype (no fp32 peak)
    try:
        unet = UNet2DConditionModel(**config)
    finally:
        torch.set_default_dtype(previous)
    cache.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file({k: v.contiguous() for k, v in unet.state_dict().items()}, str(tmp))
    os.replace(tmp, path)
    return unet


def unet_inputs(
    unet: nn.Module, batch: int, latent: int, seed: int = 1, dtype: torch.dtype = torch.float32, device: str = "cpu"
) -> tuple[Tensor, Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    cfg = unet.config
    x = torch.randn(batch, cfg.in_channels, latent, latent, generator=g)
    enc = torch.randn(batch, 77, cfg.cross_attention_dim, generator=g)
    t = torch.full((batch,), 999, dtype=torch.long)
    return x.to(device, dtype), t.to(device), enc.to(device, dtype)


def share_base_copy(model: nn.Module) -> nn.Module:
    """Deep copy of the module tree that shares every parameter and buffer with ``model``."""
    memo = {id(p): p for p in model.parameters()}
    memo.update({id(b): b for b in model.buffers()})
    return copy.deepcopy(model, memo)


def target_names(unet: nn.Module, preset: str = "paper-student") -> list[str]:
    from wadi_lorad.lorad.presets import match_modules, resolve_targets

    return [n for n, _ in match_modules(unet, resolve_targets(unet, preset))]


def _randomize(params: Sequence[Tensor], scale: float, seed: int) -> None:
    """Small random values everywhere: never time on zeros (a zero-init A or B can hide work)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in params:
            p.copy_((torch.randn(p.shape, generator=g) * scale).to(p.dtype))


# ----------------------------------------------------------------------------- official-style hook
class _HookAdapter:
    """θ factors attached to a Linear plus the forward hook that recomputes the Linear."""

    def __init__(self, lin: nn.Linear, rank: int) -> None:
        out_f, in_f = lin.weight.shape
        dev = lin.weight.device
        lin.theta_a = nn.Parameter(torch.zeros(out_f, rank, device=dev))
        b = torch.empty(rank, in_f // 2, device=dev)
        nn.init.xavier_uniform_(b)
        lin.theta_b = nn.Parameter(b)
        self.handle = lin.register_forward_hook(_official_hook)


def _official_hook(module: nn.Linear, inputs: tuple[Tensor, ...], output: Tensor) -> Tensor:
    # The module's own forward already ran (its output is thrown away): that is the
    # double compute the official code pays.  Rebuild W_rot in fp32 by strided halves.
    theta = module.theta_a @ module.theta_b
    theta = torch.remainder(theta + math.pi, 2 * math.pi) - math.pi
    w = module.weight
    w_odd, w_even = w[:, 0::2].float(), w[:, 1::2].float()
    c, s = torch.cos(theta), torch.sin(theta)
    w_rot = torch.empty_like(w)
    w_rot[:, 0::2] = (c * w_odd - s * w_even).to(w.dtype)
    w_rot[:, 1::2] = (s * w_odd + c * w_even).to(w.dtype)
    x = inputs[0]
    return F.linear(x, w_rot.to(x.dtype), None if module.bias is None else module.bias.to(x.dtype))


def add_hook_adapters(unet: nn.Module, names: Sequence[str], rank: int) -> list[nn.Parameter]:
    params = []
    for n in names:
        lin = unet.get_submodule(n)
        _HookAdapter(lin, rank)
        params += [lin.theta_a, lin.theta_b]
    return params


# ----------------------------------------------------------------------------- candidates
def apply_candidate(
    unet: nn.Module,
    kind: str,
    rank: int,
    preset: str = "paper-student",
    adapter: str = "student",
    seed: int = 0,
    randomize: bool = True,
) -> list[nn.Parameter]:
    """Add adapter ``kind`` on the ``preset`` layers (in place); return its trainable parameters.

    Every candidate adapts exactly the layers that LoRaD's preset selects.
    """
    from wadi_lorad.lorad import inject

    names = target_names(unet, preset)
    if kind in ("lorad", "lorad-naive"):
        inject.inject(unet, adapter, preset, rank=rank, seed=seed)
        inject.set_active(unet, adapter)
        if kind == "lorad-naive":
            inject.set_naive(unet, True)
        params = inject.adapter_parameters(unet, adapter)
        if randomize:
            _randomize([la.lorad[adapter].A for _, la in inject.lorad_layers(unet) if adapter in la.lorad], 1e-3, seed)
    elif kind == "hook":
        params = add_hook_adapters(unet, names, rank)
        if randomize:
            _randomize(params[0::2], 1e-3, seed)
    elif kind in ("lora", "dora"):
        from peft import LoraConfig, inject_adapter_in_model

        cfg = LoraConfig(r=rank, lora_alpha=rank, lora_dropout=0.0, target_modules=list(names),
                         use_dora=kind == "dora")
        inject_adapter_in_model(cfg, unet, adapter_name=adapter)
        params = [p for n, p in unet.named_parameters() if f".{adapter}" in n and "lora_" in n]
        if randomize:
            _randomize([p for n, p in unet.named_parameters() if "lora_B" in n], 1e-3, seed)
    else:
        raise KeyError(f"unknown candidate {kind!r}; choose from {CANDIDATES}")
    for p in unet.parameters():
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    return params


def train_step_fn(
    unet: nn.Module, params: Sequence[nn.Parameter], inputs: tuple[Tensor, Tensor, Tensor],
    autocast: torch.dtype | None = None,
) -> Callable[[], None]:
    """One forward + backward of an eps-MSE-like loss; grads dropped afterwards (no optimizer)."""
    x, t, enc = inputs
    dev = x.device.type

    def step() -> None:
        with torch.autocast(dev, dtype=autocast, enabled=autocast is not None):
            out = unet(x, t, encoder_hidden_states=enc).sample
        loss = out.float().square().mean()
        loss.backward()
        for p in params:
            p.grad = None

    return step


def trainable_count(params: Sequence[Tensor]) -> int:
    return sum(p.numel() for p in params)
