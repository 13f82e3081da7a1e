"""Apply cost: patching a full SD1.5-shape UNet with a r=256 LoRaD vs merging an equal-rank LoRA.

The weights are the real SD1.5 UNet's target Linear weights (``paper-student``:
182 layers, 268M values) with random values, in fp16 by default (what ComfyUI
holds); the other tensors of the state dict are untouched by both paths and not
allocated.  Each candidate patches its own copy of the weights in place:

* ``lorad``       - ``rotate_(W, wrap(A @ B))`` with ``lorad.functional`` (fp32 math, cast in place);
* ``lora``        - ``W <- W + up @ down`` (fp32 math, cast in place), the usual LoRA merge;
* ``comfy-lorad`` / ``comfy-lora`` - the same through ComfyUI's patch path
  (``comfy.lora.calculate_weight`` on a float32 copy, then cast back, as
  ``ModelPatcher.patch_weight_to_device`` does) with our ``LoRaDAdapter`` and
  ComfyUI's ``LoRAAdapter``.  Needs ComfyUI importable: run with ComfyUI's
  Python and ``COMFYUI_DIR`` set, e.g.
  ``COMFYUI_DIR=/work/comfyui /work/comfyui-venv/bin/python bench/apply_cost.py``.

With ``--file`` also ``lorad-file`` / ``lora-file``: read the adapter file and apply it
(``lorad.io.load_lorad`` with its validation and hash check, against safetensors'
``load_file`` of the LoRA), the whole path a loader takes.

Goal (issue 6): LoRaD apply <= 1.2x the LoRA merge.
"""

from __future__ import annotations

import os
import sys
import tempfile

import harness
import torch

harness.load_package()
import models  # noqa: E402

DT = {"fp16": torch.float16, "fp32": torch.float32, "bf16": torch.bfloat16}


def parse(argv=None):
    p = harness.base_parser(__doc__.split("\n")[0])
    p.add_argument("--dtype", default="fp16", choices=sorted(DT))
    p.add_argument("--rank", type=int, default=256)
    p.add_argument("--unet", default="sd15", choices=sorted(models.UNET_CONFIGS))
    p.add_argument("--device", default="cpu")
    p.add_argument("--no-comfy", action="store_true", help="skip the ComfyUI candidates")
    p.add_argument("--file", action="store_true", help="also time reading the adapter files")
    return p.parse_args(argv)


def target_shapes(unet_kind: str) -> dict[str, tuple[int, int]]:
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        unet = UNet2DConditionModel(**models.UNET_CONFIGS[unet_kind])
    return {n: tuple(unet.get_submodule(n).weight.shape) for n in models.target_names(unet, "paper-student")}


def make_weights(shapes, dtype, device, seed=0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {n: (torch.randn(s, generator=g) * 0.02).to(device, dtype) for n, s in shapes.items()}


def make_adapters(shapes, rank, seed=1):
    """LoRaD factors (A: out x r, B: r x in/2) and LoRA factors (up: out x r, down: r x in), fp32."""
    g = torch.Generator().manual_seed(seed)
    lorad, lora = {}, {}
    for n, (o, i) in shapes.items():
        lorad[n] = (torch.randn(o, rank, generator=g) * 1e-2, torch.randn(rank, i // 2, generator=g) * 1e-1)
        lora[n] = (torch.randn(o, rank, generator=g) * 1e-3, torch.randn(rank, i, generator=g) * 1e-2)
    return lorad, lora


# ----------------------------------------------------------------------------- candidates
def apply_lorad(weights, lorad) -> None:
    from wadi_lorad.lorad import functional

    with torch.no_grad():
        for n, w in weights.items():
            a, b = lorad[n]
            functional.rotate_(w, functional.angles(a.to(w.device), b.to(w.device)), name=n)


def apply_lora(weights, lora) -> None:
    with torch.no_grad():
        for n, w in weights.items():
            up, down = lora[n]
            w.copy_(w.float() + up.to(w.device) @ down.to(w.device))  # copy_ casts back


def comfy_available() -> str | None:
    """None if ComfyUI imports (with our adapter), else why not."""
    d = os.environ.get("COMFYUI_DIR")
    if not d:
        return "COMFYUI_DIR is not set"
    if d not in sys.path:
        sys.path.insert(0, d)
    try:
        import comfy.cli_args

        if not torch.cuda.is_available():
            comfy.cli_args.args.cpu = True  # before model_management is imported: no CUDA probing
        import comfy.lora  # noqa: F401
        import comfy.weight_adapter.lora  # noqa: F401
    except Exception as e:  # noqa: BLE001 - any import problem means: skip with the reason
        return f"cannot import ComfyUI from {d} with {sys.executable}: {e}"
    try:
        from wadi_lorad.nodes import adapter  # noqa: F401
    except Exception as e:  # noqa: BLE001
        return f"our ComfyUI adapter (nodes/adapter.py) is not importable: {e}"
    return None


def comfy_patches(lorad, lora):
    from comfy.weight_adapter.lora import LoRAAdapter
    from wadi_lorad.nodes.adapter import LoRaDAdapter

    # patch tuple: (strength, adapter, strength_model, offset, function)
    p_lorad = {n: [(1.0, LoRaDAdapter(set(), (a, b)), 1.0, None, None)] for n, (a, b) in lorad.items()}
    p_lora = {n: [(1.0, LoRAAdapter(set(), (up, down, None, None, None, None)), 1.0, None, None)]
              for n, (up, down) in lora.items()}
    return p_lorad, p_lora


def apply_comfy(weights, patches) -> None:
    import comfy.lora

    with torch.no_grad():
        for n, w in weights.items():
            temp = w.to(torch.float32, copy=True)  # ModelPatcher.patch_weight_to_device's float32 copy
            out = comfy.lora.calculate_weight(patches[n], temp, n)
            w.copy_(out.to(w.dtype))


# ----------------------------------------------------------------------------- files
def write_files(lorad, lora, tmp: str) -> tuple[str, str]:
    """A real ``.lorad.safetensors`` (``lorad.io.save_lorad``, fp32) and a LoRA safetensors file."""
    from safetensors.torch import save_file
    from wadi_lorad.lorad import io as lorad_io
    from wadi_lorad.lorad.metadata import build_metadata

    p_lora = os.path.join(tmp, "lora.safetensors")
    save_file({f"{n}.lora_up.weight": u.contiguous() for n, (u, _) in lora.items()}
              | {f"{n}.lora_down.weight": d.contiguous() for n, (_, d) in lora.items()}, p_lora)
    p_lorad = os.path.join(tmp, "student.lorad.safetensors")
    rank = next(iter(lorad.values()))[0].shape[1]
    layers = lorad_io.layers_from_adapter_state("sd15", {n: {"A": a, "B": b} for n, (a, b) in lorad.items()})
    md = build_metadata(arch="sd15", rank=rank, target_preset="paper-student", title="bench student",
                        one_step={"timestep": 999, "alpha_bar_T": 0.0047})
    lorad_io.save_lorad(p_lorad, layers, md, force=True)
    return p_lorad, p_lora


def file_candidates(p_lorad: str, p_lora: str):
    """Read + apply from the files: ``load_lorad`` (validation and hash check included) vs ``load_file``."""
    from safetensors.torch import load_file
    from wadi_lorad.lorad import io as lorad_io

    def lorad_file(w):
        f = lorad_io.load_lorad(p_lorad)
        state = lorad_io.adapter_state_from_layers("sd15", f.layers)
        apply_lorad(w, {n: (t["A"], t["B"]) for n, t in state.items()})

    def lora_file(w):
        sd = load_file(p_lora)
        apply_lora(w, {n: (sd[f"{n}.lora_up.weight"], sd[f"{n}.lora_down.weight"]) for n in w})

    return {"lora-file": lora_file, "lorad-file": lorad_file}


# ----------------------------------------------------------------------------- main
def build_candidates(args, shapes, lorad, lora, with_comfy: bool, files: tuple[str, str] | None = None):
    cands = {
        "lora": (lambda w: apply_lora(w, lora)),
        "lorad": (lambda w: apply_lorad(w, lorad)),
    }
    if files:
        cands.update(file_candidates(*files))
    if with_comfy:
        p_lorad, p_lora = comfy_patches(lorad, lora)
        cands["comfy-lora"] = lambda w: apply_comfy(w, p_lora)
        cands["comfy-lorad"] = lambda w: apply_comfy(w, p_lorad)
    return cands


def mem_child(args) -> None:
    models.preload()
    harness.child_start(args.device)
    shapes = target_shapes(args.unet)
    lorad, lora = make_adapters(shapes, args.rank)
    with_comfy = args.mem_child.startswith("comfy") and comfy_available() is None
    with tempfile.TemporaryDirectory() as tmp:
        files = write_files(lorad, lora, tmp) if args.mem_child.endswith("-file") else None
        cands = build_candidates(args, shapes, lorad, lora, with_comfy, files)
        w = make_weights(shapes, DT[args.dtype], args.device)
        fn = cands[args.mem_child]
        fn(w)
        harness.child_report(harness.measure_peak(lambda: fn(w), args.device))


def main(argv=None) -> int:
    args = parse(argv)
    info = harness.begin(args, mem_child)
    if info is None:  # a memory-measuring child
        return 0
    why = "--no-comfy" if args.no_comfy else comfy_available()
    if why:
        print(f"ComfyUI candidates skipped: {why}")
    shapes = target_shapes(args.unet)
    n_w = sum(o * i for o, i in shapes.values())
    lorad, lora = make_adapters(shapes, args.rank)
    n_lorad = sum(a.numel() + b.numel() for a, b in lorad.values())
    n_lora = sum(u.numel() + d.numel() for u, d in lora.values())
    load = harness.wait_for_quiet(args.max_load, args.wait)
    print(f"{args.unet} paper-student: {len(shapes)} Linear weights, {n_w / 1e6:.1f}M values in {args.dtype}; "
          f"LoRaD r{args.rank} {n_lorad / 1e6:.2f}M params, LoRA r{args.rank} {n_lora / 1e6:.2f}M params; "
          f"load {load:.2f}")
    with tempfile.TemporaryDirectory() as tmp:
        files = write_files(lorad, lora, tmp) if args.file else None
        cands = build_candidates(args, shapes, lorad, lora, why is None, files)
        weights = {k: make_weights(shapes, DT[args.dtype], args.device) for k in cands}
        steps = {k: (lambda k=k: cands[k](weights[k])) for k in cands}
        times = harness.interleaved(steps, args.repeats, args.warmup, args.device)
        weights.clear()
        sizes = {k: os.path.getsize(p) / 2**20 for k, p in zip(("lorad-file", "lora-file"), files or ())}
    rows = harness.paired_rows(times, "lora")
    if not args.no_mem:
        mem = harness.memory_by_subprocess(sys.argv[0], list(cands), sys.argv[1:], args.device)
        harness.add_memory(rows, mem, "lora")
    if files:
        for k, v in sizes.items():
            rows[k].extra["file MiB"] = f"{v:.0f}"
            rows[k].extra[f"x {k.replace('lorad', 'lora')}"] = "-"
        fr = harness.Stat.of([a / b for a, b in zip(times["lorad-file"], times["lora-file"])])
        rows["lorad-file"].extra["x lora-file"] = f"{fr.median:.3f} ({fr.q1:.3f}-{fr.q3:.3f})"
    table = [rows[k] for k in cands]
    print(harness.fmt_table(table, "lora", extra_cols=["file MiB", "x lora-file"] if files else ()))
    # GEMM FLOPs per layer: LoRaD A@B = out*r*in (B has in/2 columns); LoRA up@down = 2*out*r*in.
    gf_lorad = sum(o * args.rank * i for o, i in shapes.values()) / 1e9
    print(f"GEMM GFLOP per apply: LoRaD {gf_lorad:.1f}, LoRA {2 * gf_lorad:.1f} (plus elementwise: LoRaD "
          f"cos+sin on {n_w / 2e6:.0f}M angles and a pairwise rotation; LoRA one add)")
    result = {"machine": info, "args": vars(args), "results": harness.rows_json(table),
              "gflop": {"lorad": gf_lorad, "lora": 2 * gf_lorad}}
    harness.write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
