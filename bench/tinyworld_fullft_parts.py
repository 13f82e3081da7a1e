"""Which parts of a full fine-tuned tiny-world student carry its score, and could LoRaD hold them?

A full-FT student (``bench/tinyworld_study.py --set adapter.kind=full``) beats the LoRaD student at
t = 800.  This script scores hybrids on the study's fixed evaluation (256 prompts x 2 noise seeds,
one step at ``--timestep``): the teacher's weights with some of the student's changes put back,
optionally transformed:

* by kind of parameter: convolution weights only, Linear weights only, everything but the time
  embedding, weights without biases and norm layers;
* direction only: every weight row put back at the teacher's row norm (does the norm change matter?);
* the LoRaD projection: each input-column pair (2k, 2k+1) of the teacher rotated by the angle
  between it and the tuned pair (``lorad.extract.pair_angles``), which is the nearest weight a LoRaD
  layer of full rank can reach, applied to the Linear layers, the convolutions, or both;
* by group of convolutions: everything but one group (conv_in, conv_out, the resnets' 3x3, the
  up/down samplers, the 1x1 projections, the 1x1 shortcuts).

With LoRaD students (``--lorad-students``) it also prints the root-mean-square angle per layer kind
next to the full-FT student's pair angles: how far each got where.

    OMP_NUM_THREADS=1 python bench/tinyworld_fullft_parts.py outputs/study/q-full1e-4-s0/student_params_ema.safetensors --lorad-students outputs/study/T800-s0/student_params_ema.safetensors outputs/study/q-convall-c03-s0/student_params_ema.safetensors --json docs/perf/tinyworld_fullft_parts.json
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import harness
import torch
from torch import Tensor

harness.load_package()
from wadi_lorad.lorad import functional  # noqa: E402
from wadi_lorad.lorad.extract import pair_angles  # noqa: E402

State = dict[str, Tensor]


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("student", help="a full-FT student's parameters (student_params*.safetensors of the study)")
    p.add_argument("--lorad-students", nargs="*", default=[], help="LoRaD students' parameters (A/B per layer), "
                                                                     "for the angle comparison")
    p.add_argument("--config", default="configs/tinyworld-quality-linear.yaml", help="the recipe the student was trained on")
    p.add_argument("--study", default="outputs/study", help="the study's folder (prompts and text cache)")
    p.add_argument("--timestep", type=int, default=0, help="one-step timestep (0 = the config's vsd.timestep)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", default="", help="also write the results here")
    return p.parse_args(argv)


# -- hybrids: pure functions over state dicts ------------------------------------------------------


def lorad_projection(base: Tensor, tuned: Tensor) -> Tensor:
    """``base`` with every input-column pair rotated onto the direction of ``tuned``'s pair: the
    weight a full-rank LoRaD layer gets closest to (pair norms stay the base's)."""
    theta, _ = pair_angles(base, tuned)
    return functional.rotate(base.double(), theta).to(base.dtype)


def with_row_norms(base: Tensor, tuned: Tensor) -> Tensor:
    """``tuned``'s row directions at ``base``'s row norms (rows = output channels)."""
    rows = tuned.reshape(tuned.shape[0], -1)
    scale = base.reshape(base.shape[0], -1).norm(dim=1, keepdim=True) / rows.norm(dim=1, keepdim=True).clamp_min(1e-30)
    return (rows * scale).reshape(tuned.shape)


def hybrid(teacher: Mapping[str, Tensor], tuned: Mapping[str, Tensor], keep: Callable[[str], bool],
           transform: Callable[[str], Callable[[Tensor, Tensor], Tensor] | None] = lambda name: None) -> State:
    """The teacher's state with ``tuned``'s value put back where ``keep(name)``, passed through
    ``transform(name)(teacher_value, tuned_value)`` when that gives a function."""
    out: State = {}
    for name, value in teacher.items():
        if not keep(name):
            out[name] = value
            continue
        fn = transform(name)
        out[name] = fn(value, tuned[name]) if fn else tuned[name]
    return out


def layer_kinds(teacher: Mapping[str, Tensor]) -> dict[str, set[str]]:
    """Parameter names by kind: Linear and convolution weights, the time embedding, conv groups."""
    conv = {k for k, v in teacher.items() if k.endswith(".weight") and v.dim() == 4}
    one = {k for k in conv if teacher[k].shape[-1] == 1}
    proj = {k for k in one if ".proj_" in k}
    return {
        "linear": {k for k, v in teacher.items() if k.endswith(".weight") and v.dim() == 2},
        "conv": conv,
        "time embedding": {k for k in teacher if k.startswith("time_embedding.")},
        "conv_in": {k for k in conv if k.startswith("conv_in.")},
        "conv_out": {k for k in conv if k.startswith("conv_out.")},
        "resnet 3x3": {k for k in conv - one if re.search(r"resnets\.\d+\.conv[12]\.", k)},
        "samplers 3x3": {k for k in conv - one if "samplers" in k},
        "projections 1x1": proj,
        "shortcuts 1x1": one - proj,
    }


def variants(teacher: Mapping[str, Tensor], tuned: Mapping[str, Tensor]) -> Iterator[tuple[str, State]]:
    """``(name, state)`` for each hybrid, built one at a time as the caller scores it (each is a full state)."""
    kinds = layer_kinds(teacher)
    lin, conv = kinds["linear"], kinds["conv"]
    weights = lin | conv

    def on(names: set[str], fn):
        return lambda name: fn if name in names else None

    yield "full FT (all changes)", hybrid(teacher, tuned, lambda k: True)
    yield "teacher (no changes)", hybrid(teacher, tuned, lambda k: False)
    yield "convolution weights only", hybrid(teacher, tuned, lambda k: k in conv)
    yield "Linear weights only", hybrid(teacher, tuned, lambda k: k in lin)
    yield "all but the time embedding", hybrid(teacher, tuned, lambda k: k not in kinds["time embedding"])
    yield "weights only (teacher's biases and norms)", hybrid(teacher, tuned, lambda k: k in weights)
    yield "direction only (teacher's row norms)", hybrid(teacher, tuned, lambda k: True, on(weights, with_row_norms))
    yield ("LoRaD projection of the Linear layers, rest full FT",
           hybrid(teacher, tuned, lambda k: True, on(lin, lorad_projection)))
    yield ("LoRaD projection of the Linear layers only",
           hybrid(teacher, tuned, lambda k: k in lin, on(lin, lorad_projection)))
    yield ("LoRaD projection of Linear and convolutions, rest full FT",
           hybrid(teacher, tuned, lambda k: True, on(weights, lorad_projection)))
    for group in ("conv_in", "conv_out", "resnet 3x3", "samplers 3x3", "projections 1x1", "shortcuts 1x1"):
        names = kinds[group]
        yield f"all but {group} ({len(names)} layers)", hybrid(teacher, tuned, lambda k, names=names: k not in names)


def angle_rms(teacher: Mapping[str, Tensor], tuned: Mapping[str, Tensor] | None = None,
              lorad: Mapping[str, Tensor] | None = None) -> dict[str, float]:
    """Root-mean-square rotation angle per layer kind (Linear, convolution), from a tuned state's
    pair angles against the teacher, or from a LoRaD student's factors (theta = wrap(A @ B)); over
    every Linear and convolution layer either way (a layer left alone counts as 0), so they compare."""
    kinds = layer_kinds(teacher)
    sums = {"linear": [0.0, 0], "conv": [0.0, 0]}
    for name in sorted(kinds["linear"] | kinds["conv"]):
        module, w = name[: -len(".weight")], teacher[name]
        if w[0].numel() % 2:
            continue  # no column pairs: no angle
        if tuned is not None:
            theta, _ = pair_angles(w, tuned[name])
        elif lorad is not None and f"{module}.A" in lorad:
            theta = functional.angles(lorad[f"{module}.A"].double(), lorad[f"{module}.B"].double())
        else:  # a layer the LoRaD student leaves alone counts as angle 0, as in the full-FT sum
            theta = torch.zeros(w.shape[0], w[0].numel() // 2)
        kind = "linear" if name in kinds["linear"] else "conv"
        sums[kind][0] += float(theta.pow(2).sum())
        sums[kind][1] += theta.numel()
    return {k: round((s / n) ** 0.5, 4) for k, (s, n) in sums.items() if n}


# -- scoring ------------------------------------------------------------------------------------------


def main(argv=None) -> int:
    from safetensors.torch import load_file
    from tinyworld_study import evaluate
    from wadi_lorad.trainer.config import apply_overrides, load_yaml
    from wadi_lorad.trainer.distill import Distiller
    from wadi_lorad.trainer.tinyworld import metrics

    a = parse(argv)
    torch.set_num_threads(a.threads)
    study = Path(a.study)
    sets = [("data.prompts", str(study / "prompts.txt")), ("data.cache_dir", str(study / ".text_cache")),
            ("output.dir", str(study / ".fullft_parts")), ("output.force", "true"), ("output.sample_every", "0"),
            ("output.checkpoint_every", "0"), ("adapter.kind", "full"), ("train.ema_decay", "0")]
    if a.timestep:
        sets.append(("vsd.timestep", str(a.timestep)))
    prompts = metrics.fixed_eval_prompts(256)
    d = Distiller(apply_overrides(load_yaml(a.config), sets), extra_prompts=prompts, progress=False,
                  log=lambda *_: None)
    d.setup()
    teacher = {k: v.detach().clone() for k, v in d.views.student.params.items()}
    tuned = load_file(a.student)
    missing = sorted(set(teacher) - set(tuned))
    if missing:
        raise SystemExit(f"{a.student}: not a full-FT student of this teacher; missing {missing[:3]} "
                         f"and {max(0, len(missing) - 3)} more")
    result: dict[str, object] = {"student": Path(a.student).parent.name, "timestep": d.settings.timestep,
                                 "angle_rms": {"full FT": angle_rms(teacher, tuned=tuned)}, "hybrids": {}}
    for f in a.lorad_students:
        result["angle_rms"][f"LoRaD {Path(f).parent.name}"] = angle_rms(teacher, lorad=load_file(f))
    print("RMS angle per layer kind:", result["angle_rms"], flush=True)
    for name, state in variants(teacher, tuned):
        d.views.student.load_state(state, name)
        sc = evaluate(d, prompts, [0, 1])
        row = {"alignment": round(sc["alignment_mean"], 4), "fd": round(sc["fd_mean"], 1)}
        result["hybrids"][name] = row
        print(f"{name}: alignment {row['alignment']:.3f}, FD {row['fd']:.0f}", flush=True)
    if a.json:
        harness.write_json(a.json, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
