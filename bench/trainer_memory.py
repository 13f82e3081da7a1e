"""Peak resident memory of one WaDi training step on a full-size UNet, and where it goes (issue 14).

One step = the trainer's own ``trainer.step.micro_step`` (LoRaD student r256 paper-student + fake
r32 paper-fake over ONE frozen base, teacher/fake CFG batched) plus clip + AdamW for both parts, as
``bench/vsd_step.py`` runs it; or the official-style loop of ``bench/official.py`` (three UNet copies,
hooks, separate CFG passes).  Weights are random (no download); the text encoder is replaced by random
cross-attention features of the real shape (77 x 768 for SD1.5, 77 x 2048 + a pooled 1280 for SDXL).

Every case runs in its own child process (the harness's memory protocol: glibc returns freed blocks,
VmHWM reset before the step) and reports its breakdown from resident-set marks:

* ``weights``    - after building the frozen UNet (the official style: its three copies);
* ``adapters``   - after injecting the adapters (LoRaD parameters, float32);
* ``optimizer``  - after AdamW's state exists (made by a zero-gradient step: no parameter moves);
* ``grads``      - the adapters' gradients, counted (4 bytes per trainable parameter);
* ``activations`` - the rest of the step's peak: peak - weights - adapters - optimizer - grads.

A watchdog in the child stops it when its resident set passes ``--cap-mib`` (the case is then
reported as "over cap", a lower bound), so a case that does not fit never takes the machine down::

    python bench/trainer_memory.py --models sd15 --latent 64 --dtypes fp32 bf16 --checkpointing off on \\
        --candidates ours official --threads 1 --json docs/perf/trainer_memory_cpu.json
    python bench/trainer_memory.py --models sd15 --latent 64 --dtypes bf16 --checkpointing off --batch 2 \\
        --candidates ours --threads 1 --json docs/perf/trainer_memory_cpu.json      # merged into the same file

``--report PATH`` prints the measured table and the GPU-fit table from a JSON written before.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import harness
import torch

harness.load_package()
import models  # noqa: E402
import official  # noqa: E402
import vsd_step  # noqa: E402

MIB = 2**20
GPU_GIB = (12, 16, 24, 48, 80)
CUDA_OVERHEAD_GIB = 1.0  # CUDA context + allocator slack a GPU run adds on top of the tensors (not measured here)
MAX_BATCH = 256
LOOPS = ("ours", "official", "official-shared")


@dataclass(frozen=True)
class Case:
    model: str
    candidate: str  # ours | official | official-shared
    dtype: str  # fp32 | bf16 (frozen weights; adapters stay float32)
    ckpt: bool
    batch: int
    latent: int

    @property
    def key(self) -> str:
        return f"{self.model}:{self.candidate}:{self.dtype}:{'ckpt' if self.ckpt else 'nockpt'}:b{self.batch}:l{self.latent}"

    @classmethod
    def parse(cls, key: str) -> Case:
        model, cand, dtype, ck, b, lat = key.split(":")
        return cls(model, cand, dtype, ck == "ckpt", int(b[1:]), int(lat[1:]))


def parse(argv=None) -> argparse.Namespace:
    p = harness.base_parser(__doc__.split("\n")[0])
    p.add_argument("--models", nargs="+", default=["sd15"], help="sd15 | sd21 | sdxl | sd15-lite | sd15-toy")
    p.add_argument("--candidates", nargs="+", default=["ours", "official"], choices=list(LOOPS),
                   help="official-shared: the official loop whose three models share the frozen tensors (what a "
                        "case over the cap can still measure: its activations; the two copies are then counted)")
    p.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    p.add_argument("--checkpointing", nargs="+", default=["off", "on"], choices=["off", "on"])
    p.add_argument("--batch", nargs="+", type=int, default=[1])
    p.add_argument("--latent", type=int, default=64, help="latent side (64 = 512 px)")
    p.add_argument("--student-rank", type=int, default=256)
    p.add_argument("--fake-rank", type=int, default=32)
    p.add_argument("--guidance", type=float, default=1.5)
    p.add_argument("--device", default="cpu", choices=["cpu"], help="resident-set peaks: CPU only")
    p.add_argument("--cap-mib", type=float, default=11000, help="stop a child whose resident set passes this")
    p.add_argument("--cases", nargs="*", default=None, metavar="KEY",
                   help="explicit cases model:loop:dtype:ckpt|nockpt:bN:lN, in this order (instead of the product)")
    p.add_argument("--counted", nargs="+", default=None, metavar="MODEL",
                   help="also count (meta device, nothing run) the fixed bytes of these models: weights, adapters, "
                        "grads, AdamW state")
    p.add_argument("--report", default=None, metavar="JSON", help="only print the tables of a JSON written before")
    return p.parse_args(argv)


# ----------------------------------------------------------------------------- child
_STAGE = ["start"]


def _rss() -> float:
    return harness._status_bytes("VmRSS")


def _watchdog(cap_mib: float) -> None:
    """Stop the process (reporting the stage) the moment its resident set passes ``cap_mib``."""
    def watch() -> None:
        while True:
            rss = _rss() / MIB
            if rss > cap_mib:
                harness.child_report({"over_cap_mib": cap_mib, "rss_mib": round(rss), "stage": _STAGE[0]})
                os._exit(0)
            time.sleep(0.01)

    threading.Thread(target=watch, daemon=True).start()


def _vsd_args(case: Case, args: argparse.Namespace) -> argparse.Namespace:
    """The namespace ``vsd_step``'s helpers read."""
    return argparse.Namespace(model=case.model, batch=case.batch, latent=case.latent, device="cpu",
                              student_rank=args.student_rank, fake_rank=args.fake_rank, guidance=args.guidance,
                              autocast=None, gradient_checkpointing=case.ckpt)


def _prime(opt: torch.optim.Optimizer) -> None:
    """Create AdamW's state with one zero-gradient step (weight decay 0: the parameters do not move)."""
    params = [p for g in opt.param_groups for p in g["params"]]
    for p in params:
        p.grad = torch.zeros_like(p)
    opt.step()
    opt.zero_grad(set_to_none=True)


def mem_child(args: argparse.Namespace) -> None:
    case = Case.parse(args.mem_child)
    _watchdog(args.cap_mib)
    models.preload()
    harness.child_start("cpu")
    zero = _rss()
    vargs = _vsd_args(case, args)
    _STAGE[0] = "weights"
    base = models.build_unet(case.model, dtype=vsd_step._dtype(case.dtype))
    n_weights = sum(p.numel() for p in base.parameters())
    w_bytes = sum(p.numel() * p.element_size() for p in base.parameters())
    d, cond, null = vsd_step.inputs(vargs, base)
    after_weights = _rss()
    _STAGE[0] = "adapters"
    if case.candidate == "ours":
        runner = vsd_step.Ours(base, vargs)
        trainable = runner.views.student.parameters() + runner.views.fake.parameters()
    else:
        runner = official.OfficialLoop(base, args.student_rank, args.fake_rank, copies=case.candidate == "official",
                                       guidance=args.guidance, gradient_checkpointing=case.ckpt, teacher_is_base=True)
        trainable = runner.p_student + runner.p_fake
    del base
    after_adapters = _rss()
    _STAGE[0] = "optimizer"
    _prime(runner.opt_s)
    _prime(runner.opt_f)
    after_opt = _rss()
    _STAGE[0] = "step"
    peak = harness.measure_peak(lambda: runner.step(d, cond, null))
    a_bytes = sum(p.numel() * p.element_size() for p in trainable)
    copies = 3 if case.candidate == "official" else 1
    split = case.candidate != "ours"  # the official loop makes its copies and adapters together: split by count
    mib = {
        "weights": (after_adapters - zero - a_bytes) / MIB if split else (after_weights - zero) / MIB,
        "adapters": a_bytes / MIB if split else (after_adapters - after_weights) / MIB,
        "optimizer": (after_opt - after_adapters) / MIB,
        "grads": a_bytes / MIB,
    }
    mib["activations"] = peak["total_mib"] - sum(mib.values())
    harness.child_report({
        "total_mib": peak["total_mib"], "step_mib": peak["step_mib"], "breakdown_mib": mib,
        "counted_mib": {"weights": copies * w_bytes / MIB, "adapters": a_bytes / MIB, "optimizer": 2 * a_bytes / MIB},
        "frozen_params": n_weights, "trainable_params": sum(p.numel() for p in trainable), "copies": copies,
    })


# ----------------------------------------------------------------------------- parent
def cases(args: argparse.Namespace) -> list[Case]:
    if args.cases is not None:  # given, even empty (--counted alone)
        return [Case.parse(k) for k in args.cases]
    return [Case(m, c, dt, ck == "on", b, args.latent) for m in args.models for dt in args.dtypes
            for ck in args.checkpointing for b in args.batch for c in args.candidates]


def _load(path: str | None) -> dict:
    if path and Path(path).is_file():
        return json.loads(Path(path).read_text())
    return {"results": {}}


def run(args: argparse.Namespace, info: dict) -> dict:
    data = _load(args.json)
    data.setdefault("results", {})
    data.setdefault("machines", []).append(info)
    argv = harness.strip_child_args(sys.argv[1:])
    for model in args.counted or []:
        data.setdefault("counted", {})[model] = counted(model, args)
    for case in cases(args):
        t0 = time.monotonic()
        print(f"== {case.key} ...", file=sys.stderr, flush=True)
        try:
            res = harness.peak_rss_delta(sys.argv[0], case.key, argv)
        except RuntimeError as e:
            res = {"error": str(e)[-600:]}
        res["seconds"] = round(time.monotonic() - t0, 1)
        res["cap_mib"] = args.cap_mib
        data["results"][case.key] = res
        print(f"   {json.dumps(res)}", file=sys.stderr, flush=True)
        if args.json:  # after every case: a long run keeps what it measured
            harness.write_json(args.json, data)
    return data


def counted(model: str, args: argparse.Namespace) -> dict:
    """Parameter counts of the trainer's setup on the meta device (no memory, no compute): the exact fixed bytes."""
    from diffusers import UNet2DConditionModel
    from wadi_lorad.trainer import adapters
    from wadi_lorad.trainer.config import AdapterConfig

    with torch.device("meta"):
        unet = UNet2DConditionModel(**models.unet_config(model))
    frozen = sum(p.numel() for p in unet.parameters())
    views = adapters.build_views(unet, AdapterConfig(kind="lorad", student_rank=args.student_rank,
                                                     fake_rank=args.fake_rank))
    student, fake = views.student.num_params(), views.fake.num_params()
    train = student + fake
    return {"frozen_params": frozen, "student_params": student, "fake_params": fake,
            "mib": {"weights_fp32": frozen * 4 / MIB, "weights_bf16": frozen * 2 / MIB, "adapters": train * 4 / MIB,
                    "grads": train * 4 / MIB, "optimizer": train * 8 / MIB}}


def _gib(mib: float) -> str:
    return f"{mib / 1024:.2f}"


def measured_table(results: dict) -> str:
    head = "| model | loop | weights | grad. ckpt | batch | latent | peak GiB | weights | adapters | optimizer | grads | activations |"
    lines = [head, "|" + "---|" * 12]
    for key, r in sorted(results.items()):
        c = Case.parse(key)
        cells = [c.model, c.candidate, c.dtype, "on" if c.ckpt else "off", str(c.batch), f"{c.latent}x{c.latent}"]
        if "over_cap_mib" in r:
            cells += [f"> {_gib(r['over_cap_mib'])} (stopped in {r['stage']})"] + ["-"] * 5
        elif "error" in r:
            cells += ["failed"] + ["-"] * 5
        else:
            b = r["breakdown_mib"]
            cells += [_gib(r["total_mib"])] + [_gib(b[k]) for k in ("weights", "adapters", "optimizer", "grads",
                                                                     "activations")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def slope_ratio(results: dict) -> dict[str, float]:
    """Per setting with batch 1 and 2 measured: (peak(2) - peak(1)) / activations(1)."""
    out = {}
    for key, r in results.items():
        c = Case.parse(key)
        if c.batch != 2 or "total_mib" not in r:
            continue
        one = results.get(Case(c.model, c.candidate, c.dtype, c.ckpt, 1, c.latent).key, {})
        if "total_mib" in one:
            out[key] = (r["total_mib"] - one["total_mib"]) / one["breakdown_mib"]["activations"]
    return out


def fit_table(results: dict) -> str:
    """Largest batch per GPU size, extrapolated from batch 1: peak(b) = fixed + b * per-sample + CUDA overhead.

    per-sample = the measured batch-2 minus batch-1 peak where both exist, else batch 1's activations.
    """
    head = "| model | loop | weights | grad. ckpt | GiB at batch 1 | GiB per extra sample | " + \
        " | ".join(f"{g} GB" for g in GPU_GIB) + " |"
    lines = [head, "|" + "---|" * (6 + len(GPU_GIB))]
    for key, r in sorted(results.items()):
        c = Case.parse(key)
        if c.batch != 1 or "total_mib" not in r:
            continue
        two = results.get(Case(c.model, c.candidate, c.dtype, c.ckpt, 2, c.latent).key, {})
        per = (two["total_mib"] - r["total_mib"]) if "total_mib" in two else r["breakdown_mib"]["activations"]
        # official-shared measured one copy of the frozen weights; the official loop holds three (counted).
        extra = 2 * r["breakdown_mib"]["weights"] if c.candidate == "official-shared" else 0.0
        fixed = r["total_mib"] + extra - per
        loop = "official (shared, +2 copies counted)" if extra else c.candidate
        cells = [c.model, loop, c.dtype, "on" if c.ckpt else "off", _gib(r["total_mib"] + extra + CUDA_OVERHEAD_GIB * 1024),
                 _gib(per) + (" (measured)" if "total_mib" in two else "")]
        for g in GPU_GIB:
            room = g * 1024 - CUDA_OVERHEAD_GIB * 1024 - fixed
            b = min(MAX_BATCH, int(room // per)) if room > 0 else 0
            cells.append("-" if b <= 0 else f">= {MAX_BATCH}" if b == MAX_BATCH else str(b))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def report(data: dict) -> None:
    res = data["results"]
    print("\nMeasured (CPU resident set, one child per case):\n")
    print(measured_table(res))
    ratios = slope_ratio(res)
    if ratios:
        print("\nBatch 2 vs 1: (peak(2) - peak(1)) / activations(1) = "
              + ", ".join(f"{k}: {v:.2f}" for k, v in ratios.items()))
    for model, c in data.get("counted", {}).items():
        m = c["mib"]
        print(f"\nCounted {model} (meta device): {c['frozen_params'] / 1e6:.1f}M frozen, student "
              f"{c['student_params'] / 1e6:.2f}M + fake {c['fake_params'] / 1e6:.2f}M trainable; GiB: weights fp32 "
              f"{_gib(m['weights_fp32'])} / bf16 {_gib(m['weights_bf16'])}, adapters {_gib(m['adapters'])}, grads "
              f"{_gib(m['grads'])}, AdamW {_gib(m['optimizer'])}")
    print(f"\nExtrapolated largest batch per GPU (+{CUDA_OVERHEAD_GIB:g} GiB CUDA overhead, GB read as GiB):\n")
    print(fit_table(res))


def main(argv=None) -> int:
    args = parse(argv)
    if args.report:
        report(_load(args.report))
        return 0
    info = harness.begin(args, mem_child)
    if info is None:
        return 0
    report(run(args, info))
    return 0


if __name__ == "__main__":
    sys.exit(main())
