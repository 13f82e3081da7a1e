"""Full-size base models live in a real ComfyUI: exactness, key coverage and what a .lorad costs.

For one architecture per run (``--arch sd15|sd21|sdxl``; each run in its own process, results
merged into ``--json``):

1. a full-size checkpoint with random weights (fp16), single-file ldm layout as ComfyUI detects it
   (SD2.1: the 768-v flag ComfyUI reads from the last output block's norm bias);
2. a paper-preset rank-256 ``.lorad`` (random non-zero angles, fp16) written by ``save_lorad``, and
   an equal-rank LoRA on the same layers (``<key>.lora_up/.lora_down/.alpha``, ComfyUI's generic
   key spelling, fp16);
3. fresh ComfyUI servers (``tests/comfy_live.Server``), one WaDi Sampler prompt each: base alone,
   base + Load LoRaD, base + stock Load LoRA.  Per server: wall time of the first prompt (load and
   apply included), the server's resident memory (``/proc/<pid>/status``) before and after it, and
   the first prompt after a strength change;
4. checks in the Load LoRaD server: every key resolved (the node's count; no "lora key not loaded"
   for the stock loader), strength 0 == base bit for bit, the stock Load LoRA of the same
   ``.lorad`` == Load LoRaD bit for bit; then, with the servers gone, ComfyUI's latent against
   the project's diffusers path (diffusers UNet in fp32 on the fp16-rounded weights, rotated by
   ``lorad.layer_spec``, ``lorad.onestep.generate``) on the same noise.

Run it with this checkout's Python (diffusers, transformers); the servers run under
``COMFY_PY``/``COMFYUI_PYTHON`` from ``COMFYUI_DIR``::

    COMFYUI_DIR=... COMFY_PY=... python bench/comfy_fullsize.py --arch sd15 --json docs/perf/comfy_fullsize_cpu.json

``--dry-run`` prints the plan (layer counts, values per file, memory estimate) without building anything.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import re
import shutil
import sys
import time
from pathlib import Path

import harness
import torch

harness.load_package()
ROOT = harness.ROOT
sys.path.insert(0, str(ROOT / "tests"))
import comfy_live  # noqa: E402  the live-server helpers the tests use
from fullsize_models import (  # noqa: E402
    RUNS,
    ArchRun,
    adapter_shapes,
    build_models,
    checkpoint_keys,
    inner,
    one_step,
    text_model,
    write_adapters,
    write_checkpoint,
)
from wadi_lorad.lorad import io as lorad_io  # noqa: E402
from wadi_lorad.lorad import keymap  # noqa: E402
from wadi_lorad.lorad.archs import load_config  # noqa: E402
from wadi_lorad.lorad.layer_spec import LayerSpec  # noqa: E402
from wadi_lorad.lorad.onestep import generate, scaled_linear_alphas_cumprod  # noqa: E402

PROMPT = "a photo of a red fox in the snow"
SEED = 7


CONFIGS = ("base", "lorad", "lora")


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--arch", required=True, choices=sorted(RUNS) + ["pixart"])
    p.add_argument("--rank", type=int, default=256)
    p.add_argument("--preset", default="paper-student")
    p.add_argument("--size", type=int, default=None, help="image side in pixels (default: per architecture)")
    p.add_argument("--repeats", type=int, default=3, help="fresh servers per configuration (interleaved)")
    p.add_argument("--warmup", type=int, default=1, help="untimed base servers first (page cache, imports)")
    p.add_argument("--workdir", default=str(Path.home() / ".cache" / "wadi-bench" / "comfy-fullsize"),
                   help="checkpoints, adapter files and the servers' folders (reused between runs)")
    p.add_argument("--json", default=None, metavar="PATH", help="merge this architecture's results into PATH")
    p.add_argument("--threads", type=int, default=1, help="torch threads here and in the servers")
    p.add_argument("--no-reference", action="store_true", help="skip the diffusers comparison")
    p.add_argument("--dry-run", action="store_true", help="print the plan; build and run nothing")
    return p.parse_args(argv)


# -- the servers -------------------------------------------------------------------------------------
def proc_mem(pid: int) -> dict[str, float]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key = line.split(":")[0]
        if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
            out[key] = int(line.split()[1]) / 2**20  # kB -> GiB
    return out


def proc_cpu_s(pid: int) -> float:
    """User + system CPU seconds of the server so far (all its threads): less sensitive than wall time to
    the other work on a shared machine, and the servers run with one torch thread."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def graph(run: ArchRun, size: int, config: str, strength: float = 1.0, prefix: str = "x", onestep_from_file=None,
          stock_lorad: bool = False, seed: int = SEED) -> tuple[dict, str]:
    """API prompt: checkpoint -> [adapter] -> CLIPTextEncode -> WaDi Sampler -> SaveLatent."""
    g: dict = {"1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": f"{run.arch}.safetensors"}},
               "3": {"class_type": "EmptyLatentImage", "inputs": {"width": size, "height": size, "batch_size": 1}}}
    model, clip = ["1", 0], ["1", 1]
    if config == "lorad":
        g["20"] = {"class_type": "WaDiLoadLoRaD", "inputs": {"model": model, "clip": clip, "strength_model": strength,
                                                            "strength_clip": strength,
                                                            "lorad_name": f"{run.arch}.lorad.safetensors"}}
        model, clip = ["20", 0], ["20", 1]
    elif config == "lora":
        name = f"{run.arch}.lorad.safetensors" if stock_lorad else f"{run.arch}_r256.lora.safetensors"
        g["20"] = {"class_type": "LoraLoader", "inputs": {"model": model, "clip": clip, "strength_model": strength,
                                                         "strength_clip": strength, "lora_name": name}}
        model, clip = ["20", 0], ["20", 1]
    g["2"] = {"class_type": "CLIPTextEncode", "inputs": {"text": PROMPT, "clip": clip}}
    g["4"] = {"class_type": "WaDiSampler", "inputs": {"seed": seed, "steps": 1, "cfg": 1.0, "denoise": 1.0,
                                                     "timesteps": "", "model": model, "positive": ["2", 0],
                                                     "latent_image": ["3", 0]}}
    if config == "lorad":
        g["4"]["inputs"]["onestep"] = ["20", 2]
    if onestep_from_file is not None:  # the one-step settings of the .lorad, from a Load LoRaD whose MODEL is unused
        g["21"] = {"class_type": "WaDiLoadLoRaD", "inputs": {"model": ["1", 0], "strength_model": 0.0,
                                                            "strength_clip": 0.0,
                                                            "lorad_name": f"{run.arch}.lorad.safetensors"}}
        g["4"]["inputs"]["onestep"] = ["21", 2]
    g["9"] = {"class_type": "SaveLatent", "inputs": {"samples": ["4", 0], "filename_prefix": f"latents/{prefix}"}}
    return g, "9"


def run_prompt(server, g: dict, out: str, cpu: list | None = None) -> tuple[float, dict, torch.Tensor]:
    """Wall seconds, history entry, latent; the server's CPU seconds for it appended to ``cpu``."""
    c0, t0 = proc_cpu_s(server.proc.pid), time.perf_counter()
    entry = server.run(g, timeout=3600)
    dt = time.perf_counter() - t0
    if cpu is not None:
        cpu.append(proc_cpu_s(server.proc.pid) - c0)
    if entry["status"].get("status_str") != "success":
        raise RuntimeError(f"prompt failed: {json.dumps(entry['status'])[:3000]}")
    return dt, entry, comfy_live.load_latent(comfy_live.output_file(server, entry, out, "latents"))


def patched_count(entry: dict) -> int | None:
    text = "".join(entry.get("outputs", {}).get("20", {}).get("text", []))
    m = re.search(r"patched: (\d+) model", text)
    return int(m.group(1)) if m else None


def server_root(work: Path, run: ArchRun) -> Path:
    root = work / f"root-{run.arch}"
    for d in ("models/checkpoints", "models/lorad", "models/loras"):
        (root / d).mkdir(parents=True, exist_ok=True)
    for src, dst in ((f"{run.arch}.safetensors", "models/checkpoints"), (f"{run.arch}.lorad.safetensors", "models/lorad"),
                     (f"{run.arch}.lorad.safetensors", "models/loras"), (f"{run.arch}_r256.lora.safetensors", "models/loras")):
        link = root / dst / src
        if link.exists() or link.is_symlink():
            link.unlink()
        link.symlink_to(work / src)
    shutil.rmtree(root / "output", ignore_errors=True)
    return root


def measure_config(root: Path, run: ArchRun, size: int, config: str, tag: str, checks: bool) -> dict:
    extra = ("--fp16-unet",) if run.unet_dtype == "fp16" else ()
    server = comfy_live.Server(root, ROOT, extra_args=extra)
    try:
        pid = server.proc.pid
        idle = proc_mem(pid)
        cpu: list[float] = []
        t1, entry, latent = run_prompt(server, graph(run, size, config, 1.0, f"{tag}-first")[0], "9", cpu)
        after = proc_mem(pid)
        res = {"first_prompt_s": t1, "first_prompt_cpu_s": cpu[0], "idle": idle, "after_first": after,
               "rss_increase_gib": after["VmRSS"] - idle["VmRSS"], "hwm_increase_gib": after["VmHWM"] - idle["VmRSS"],
               "patched_layers": patched_count(entry)}
        if config != "base":  # base has no strength: the same prompt again would be cached
            t2, _, _ = run_prompt(server, graph(run, size, config, 0.5, f"{tag}-half")[0], "9", cpu)
            res["after_strength_change_s"], res["after_strength_change_cpu_s"] = t2, cpu[-1]
            res["after_second"] = proc_mem(pid)
        # Another seed, same model: one sample alone (what the strength change adds is the re-patch).
        t3, _, _ = run_prompt(server, graph(run, size, config, 0.5, f"{tag}-seed", seed=SEED + 1)[0], "9", cpu)
        res["sample_only_s"], res["sample_only_cpu_s"] = t3, cpu[-1]
        log = server.read_log()
        res["lora_keys_not_loaded"] = log.count("lora key not loaded")
        res["latent"] = latent
        if checks and config == "lorad":
            res["checks"] = lorad_checks(server, run, size, latent)
        return res
    finally:
        server.stop()


def lorad_checks(server, run: ArchRun, size: int, latent: torch.Tensor) -> dict:
    """Strength 0 == base and the stock Load LoRA of the .lorad == Load LoRaD (same server, bit for bit)."""
    zero = run_prompt(server, graph(run, size, "lorad", 0.0, "zero")[0], "9")[2]
    base = run_prompt(server, graph(run, size, "base", 1.0, "base-onestep", onestep_from_file=True)[0], "9")[2]
    before = server.read_log().count("lora key not loaded")
    stock = run_prompt(server, graph(run, size, "lora", 1.0, "stock", onestep_from_file=True, stock_lorad=True)[0],
                       "9")[2]
    return {"strength0_equals_base": bool(torch.equal(zero, base)),
            "stock_loader_equals_load_lorad": bool(torch.equal(stock, latent)),
            "stock_lorad_keys_not_loaded": server.read_log().count("lora key not loaded") - before,
            "lorad_vs_base_max_abs": float((latent - base).abs().max())}


def read_checkpoint(path: Path, run: ArchRun):
    """The diffusers UNet and text encoders holding exactly the checkpoint's fp16 weights."""
    from diffusers import UNet2DConditionModel
    from safetensors import safe_open

    km = keymap.unet_keymap(run.arch)
    with torch.device("meta"):
        unet = UNet2DConditionModel(**{k: v for k, v in load_config(run.arch).items() if not k.startswith("_")})
        texts = [text_model(run.arch, comp, 24 if keep == 23 else None) for comp, _, _, keep in run.texts]
    ldm = {"model.diffusion_model." + km.ldm(k): k for k in unet.state_dict()}
    stored = [{prefix + name: k for k, name in checkpoint_keys(te).items()}
              for te, (_, prefix, _, _) in zip(texts, run.texts)]
    unet_sd, text_sd = {}, [{} for _ in texts]
    with safe_open(str(path), "pt") as f:
        for k in f.keys():  # noqa: SIM118 (safe_open is no dict)
            if k in ldm:
                unet_sd[ldm[k]] = f.get_tensor(k)
            for i, names in enumerate(stored):
                if k in names:
                    text_sd[i][names[k]] = f.get_tensor(k)
    unet.load_state_dict(unet_sd, assign=True, strict=True)
    for te, sd in zip(texts, text_sd):
        missing, unexpected = te.load_state_dict(sd, assign=True, strict=False)
        if unexpected or [m for m in missing if "position_ids" not in m]:
            raise RuntimeError(f"text encoder: missing {missing[:3]}, unexpected {unexpected[:3]}")
        emb = inner(te).embeddings  # a non-persistent buffer, still on the meta device
        emb.position_ids = torch.arange(emb.position_ids.shape[-1]).expand((1, -1))
    return unet.eval(), [te.eval() for te in texts]


# -- the diffusers path --------------------------------------------------------------------------------
def tokenizer(pad_id: int):
    from transformers import CLIPTokenizer

    d = Path(comfy_live.COMFYUI_DIR, "comfy", "sd1_tokenizer")
    return CLIPTokenizer(str(d / "vocab.json"), str(d / "merges.txt"), pad_token="!" if pad_id == 0 else "<|endoftext|>")


def reference_latent(work: Path, run: ArchRun, size: int) -> torch.Tensor:
    """The project's diffusers path on the checkpoint's weights and the .lorad read back, fp32."""
    unet, texts = read_checkpoint(work / f"{run.arch}.safetensors", run)
    f = lorad_io.load_lorad(work / f"{run.arch}.lorad.safetensors", dtype=None)
    state = lorad_io.adapter_state_from_layers(run.arch, f.layers)
    if run.unet_dtype == "fp32":
        unet.float()
    with torch.no_grad():  # ComfyUI rotates the weight in the dtype it holds (fp32 math, cast in place)
        for name, p in state.items():
            LayerSpec.from_parts(p, name).rotate_(unet.get_submodule(name).weight)
    unet.float()
    conds = []
    with torch.no_grad():
        for (_, _, pad, keep), te in zip(run.texts, texts):
            te = te.float()
            ids = tokenizer(pad)(PROMPT, padding="max_length", max_length=77, truncation=True, return_tensors="pt")
            out = te(ids.input_ids, output_hidden_states=True)
            if run.pooled:  # SDXL: penultimate states, no final norm; pooled from the last encoder
                conds.append(out.hidden_states[-2])
                pooled = out[0]
            elif keep is not None:  # SD2.1: the 23rd layer's output with the final norm
                conds.append(inner(te).final_layer_norm(out.hidden_states[keep]))
            else:
                conds.append(out.last_hidden_state)
    del texts
    gc.collect()
    ctx = torch.cat(conds, -1)
    added = None
    if run.pooled:
        ids = torch.tensor([[size, size, 0, 0, size, size]], dtype=torch.float32)
        added = {"text_embeds": pooled, "time_ids": ids}
    shape = (1, 4, size // 8, size // 8)
    noise = torch.randn(shape, generator=torch.manual_seed(SEED), device="cpu")
    ac = scaled_linear_alphas_cumprod()
    step = one_step(run)

    def eps_fn(x, t):
        out = unet(x, t, encoder_hidden_states=ctx, added_cond_kwargs=added).sample
        if run.v_flag:  # v -> eps: eps = sqrt(1-ab) x_t + sqrt(ab) v
            ab = step["alpha_bar_T"]
            return (1 - ab) ** 0.5 * x + ab ** 0.5 * out
        return out

    with torch.no_grad():
        x0 = generate(eps_fn, noise, ac, [999], step["alpha_bar_T"])
    return x0 / run.scale


# -- main ----------------------------------------------------------------------------------------------
def prepare(work: Path, run: ArchRun, preset: str = "paper-student", rank: int = 256) -> dict:
    """The checkpoint (built once, reused) and both adapter files in ``work``; the files' sizes and counts."""
    work.mkdir(parents=True, exist_ok=True)
    ckpt = work / f"{run.arch}.safetensors"
    t0 = time.perf_counter()
    if not ckpt.exists():
        unet, texts, vae = build_models(run)
        write_checkpoint(ckpt, run, unet, texts, vae)
        del unet, texts, vae
        gc.collect()
    info = write_adapters(work, run, preset, rank)
    info["checkpoint_gib"] = ckpt.stat().st_size / 2**30
    info["prepare_s"] = time.perf_counter() - t0
    return info


def summarize(res: dict, info: dict) -> dict:
    """Adapter cost = config minus base (same run); per stored value against the LoRA's."""
    base = res["base"]
    out = {}
    for c in ("lorad", "lora"):
        r = res[c]
        values = info["lorad_values" if c == "lorad" else "lora_values"]
        out[c] = {"apply_s": r["first_prompt_s"] - base["first_prompt_s"],
                  "apply_cpu_s": r["first_prompt_cpu_s"] - base["first_prompt_cpu_s"],
                  "rss_gib": r["rss_increase_gib"] - base["rss_increase_gib"],
                  "hwm_gib": r["hwm_increase_gib"] - base["hwm_increase_gib"], "values": values}
        out[c]["s_per_gvalue"] = out[c]["apply_s"] / values * 1e9
        out[c]["cpu_s_per_gvalue"] = out[c]["apply_cpu_s"] / values * 1e9
        out[c]["bytes_per_value"] = out[c]["rss_gib"] * 2**30 / values
    out["per_value_ratio"] = {"time": out["lorad"]["s_per_gvalue"] / out["lora"]["s_per_gvalue"],
                              "cpu_time": out["lorad"]["cpu_s_per_gvalue"] / out["lora"]["cpu_s_per_gvalue"],
                              "rss": out["lorad"]["bytes_per_value"] / out["lora"]["bytes_per_value"]}
    out["absolute_ratio"] = {"time": out["lorad"]["apply_s"] / out["lora"]["apply_s"],
                             "rss": out["lorad"]["rss_gib"] / out["lora"]["rss_gib"]}
    return out


def main(argv=None) -> int:
    args = parse(argv)
    if args.arch == "pixart":
        raise SystemExit("pixart: not run (docs/performance.md section 9): ComfyUI's PixArt text model is a full "
                         "T5-XXL, 4.76B parameters (8.9 GiB fp16; 17.7 GiB fp32 for the diffusers reference)")
    run = RUNS[args.arch]
    size = args.size or run.size
    if args.dry_run:
        shapes = adapter_shapes(run.arch, args.preset, args.rank)
        lorad_v = sum(_numel(s["A"]) + _numel(s["B"]) for s in shapes.values())
        lora_v = sum(args.rank * (s["weight"][0] + _numel(s["weight"][1:])) for s in shapes.values())
        print(json.dumps({"arch": run.arch, "size": size, "layers": len(shapes), "lorad_values": lorad_v,
                          "lora_values": lora_v, "unet_dtype": run.unet_dtype, "configs": CONFIGS}, indent=1))
        return 0
    why = comfy_live.comfy_importable() if comfy_live.COMFYUI_DIR else "COMFYUI_DIR is not set"
    if not comfy_live.COMFYUI_DIR or not Path(comfy_live.COMFYUI_DIR, "main.py").is_file():
        raise SystemExit(f"need a ComfyUI: {why}")
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    torch.set_num_threads(args.threads)
    work = Path(args.workdir)
    machine = harness.machine_info("cpu")
    print(harness.machine_line(machine), file=sys.stderr)
    info = prepare(work, run, args.preset, args.rank)
    print(f"[{run.arch}] files ready: {json.dumps(info)}", file=sys.stderr, flush=True)
    root = server_root(work, run)
    for _ in range(args.warmup):
        measure_config(root, run, size, "base", "warmup", checks=False)
    runs: dict[str, list[dict]] = {c: [] for c in CONFIGS}
    for rep in range(args.repeats):
        order = CONFIGS[rep % 3:] + CONFIGS[: rep % 3]
        for c in order:
            r = measure_config(root, run, size, c, f"{c}{rep}", checks=rep == 0)
            print(f"[{run.arch}] {c} #{rep}: first {r['first_prompt_s']:.1f} s (cpu {r['first_prompt_cpu_s']:.1f}), "
                  f"+{r['rss_increase_gib']:.2f} GiB, "
                  f"strength change {r.get('after_strength_change_s', 0):.1f} s, sample {r['sample_only_s']:.1f} s",
                  file=sys.stderr, flush=True)
            runs[c].append(r)
    med = {c: _median_run(rs) for c, rs in runs.items()}
    result = {"size": size, "unet_dtype": run.unet_dtype, "files": info, "repeats": args.repeats,
              "configs": {c: {k: v for k, v in m.items() if k != "latent"} for c, m in med.items()},
              "checks": runs["lorad"][0].get("checks", {}), "summary": summarize(med, info)}
    result["checks"]["lorad_patched_layers"] = runs["lorad"][0]["patched_layers"]
    result["checks"]["lora_keys_not_loaded"] = runs["lora"][0]["lora_keys_not_loaded"]
    if not args.no_reference:
        latent = runs["lorad"][0]["latent"]
        ref = reference_latent(work, run, size)
        result["checks"]["max_abs_latent_diff_vs_diffusers"] = float((latent - ref).abs().max())
        result["checks"]["max_abs_latent"] = float(ref.abs().max())
    print(json.dumps(result, indent=1, default=str))
    if args.json:
        merged = json.loads(Path(args.json).read_text()) if Path(args.json).is_file() else {}
        merged.setdefault("archs", {})[run.arch] = {**result, "machine": machine}
        merged["command"] = "bench/comfy_fullsize.py --arch ARCH --json " + Path(args.json).name
        harness.write_json(args.json, merged)
    return 0


def _numel(shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def _median_run(rs: list[dict]) -> dict:
    """Per numeric field the median over repeats (the first run's latent and checks)."""
    import statistics

    out = dict(rs[0])
    for k, v in rs[0].items():
        if isinstance(v, float):
            out[k] = statistics.median(r[k] for r in rs)
    out["per_repeat_first_prompt_s"] = [r["first_prompt_s"] for r in rs]
    return out


if __name__ == "__main__":
    sys.exit(main())
