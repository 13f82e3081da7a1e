"""Does a personalization LoRaD learned on the TEACHER transfer to a WaDi STUDENT by stacking?

The tiny world's personal concept "a sks shape" (a large pink cross, ``tinyworld.concepts``)
is learned from 8 captioned renders (prior preservation on "a shape") three ways, per seed:

* ``teacher``: on the base model (eps objective), then stacked on the student (angles add);
* ``student``: on the student directly (student frozen and active; ``objective.kind`` below);
* nothing (the student alone) as the floor.

Scored with the tiny world's classifier on one-step student samples: the fraction of
"a sks shape ..." prompts whose image shows the concept (``concept``: one object, the right
shape, colour and size), and on the 256 standard evaluation prompts whether the base
knowledge survives (alignment, FD).  Reference rows: the teacher's 25-step DDIM + CFG 3
without and with its adapter.  Usage (CPU, ~20 min)::

    OMP_NUM_THREADS=1 python bench/personalize_transfer.py --student outputs/student/student.lorad.safetensors \\
        --out outputs/ptransfer --seeds 0,1,2 --json docs/perf/personalize_transfer.json \\
        --figure docs/img/personalize_transfer.png
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import harness
import torch

harness.load_package()
from wadi_lorad.trainer.config import apply_overrides  # noqa: E402
from wadi_lorad.trainer.personalize import PersonalizeConfig  # noqa: E402
from wadi_lorad.trainer.personalize_train import Personalizer  # noqa: E402
from wadi_lorad.trainer.sampling import save_grid  # noqa: E402
from wadi_lorad.trainer.tinyworld import metrics  # noqa: E402
from wadi_lorad.trainer.tinyworld.adapter_eval import AdapterBench  # noqa: E402
from wadi_lorad.trainer.tinyworld.concepts import concept_prompts, concept_scores, write_concept_folder  # noqa: E402


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--student", required=True, help="WaDi student .lorad of the shipped teacher")
    p.add_argument("--out", default="outputs/ptransfer")
    p.add_argument("--seeds", default="0,1,2", help="training seeds")
    p.add_argument("--eval-seeds", default="0,1")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--lr", type=float, default=5e-3)
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--images", type=int, default=8)
    p.add_argument("--objective", default="onestep", help="objective.kind of the on-student runs")
    p.add_argument("--onestep-fraction", type=float, default=0.5)
    p.add_argument("--n-concept", type=int, default=48, help="concept prompts")
    p.add_argument("--n-eval", type=int, default=256, help="standard evaluation prompts")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", default="")
    p.add_argument("--figure", default="")
    return p.parse_args(argv)


def train(a: argparse.Namespace, data: Path, seed: int, on_student: bool) -> Path:
    tag = f"{'student' if on_student else 'teacher'}-seed{seed}"
    pairs = [("model.base", str(metrics.DEFAULT_TEACHER)), ("data.images", str(data)),
             ("data.instance_prompt", "a sks shape"), ("data.class_prompt", "a shape"),
             ("prior.enabled", "true"), ("prior.num_images", "32"), ("prior.class_dir", str(Path(a.out) / "class")),
             ("adapter.rank", str(a.rank)), ("adapter.seed", str(seed)), ("train.seed", str(seed)),
             ("optim.lr", str(a.lr)), ("train.max_steps", str(a.steps)), ("train.batch_size", "4"),
             ("output.dir", str(Path(a.out) / tag)), ("output.force", "true"), ("output.sample_every", "0"),
             ("output.checkpoint_every", "0"), ("data.cache_dir", str(Path(a.out) / ".text_cache"))]
    if on_student:
        pairs += [("model.student", a.student), ("objective.kind", a.objective),
                  ("objective.onestep_fraction", str(a.onestep_fraction))]
    t0 = time.perf_counter()
    out = Personalizer(apply_overrides(PersonalizeConfig(), pairs), progress=False).run()
    print(f"trained {tag} in {time.perf_counter() - t0:.0f} s", flush=True)
    return out["adapter"]


def score(b: AdapterBench, active: tuple[str, ...], eval_seeds: list[int], concept: list[str], std: list[str],
          steps: int = 1, guidance: float = 1.0, standard: bool = True) -> dict[str, float]:
    """Concept and standard metrics, each averaged over the evaluation seeds."""
    rows = []
    for s in eval_seeds:
        r = {f"concept_{k}": v for k, v in concept_scores(b.images(concept, active, s, steps, guidance), concept).items()}
        if standard:
            m = metrics.evaluate_images(b.images(std, active, s, steps, guidance), std)
            r.update({"alignment": m["alignment"], "fd": m["fd"]})
        rows.append(r)
    return {k: statistics.fmean(r[k] for r in rows) for k in rows[0]}


def main(argv=None) -> int:
    a = parse(argv)
    torch.set_num_threads(a.threads)
    seeds = [int(s) for s in a.seeds.split(",")]
    eval_seeds = [int(s) for s in a.eval_seeds.split(",")]
    out = Path(a.out)
    data = write_concept_folder(out / "data", a.images, seed=0)
    files = {(on, s): train(a, data, s, on) for s in seeds for on in (False, True)}
    b = AdapterBench(a.student)
    for (on, s), f in files.items():
        b.add_adapter(f"{'S' if on else 'T'}{s}", f)
    concept, std = concept_prompts(a.n_concept), metrics.fixed_eval_prompts(a.n_eval)
    res: dict[str, dict] = {}
    res["student alone (1 step)"] = harness.mean_std([score(b, ("student",), eval_seeds, concept, std)])
    res["student + teacher-trained adapter, stacked (1 step)"] = harness.mean_std(
        [score(b, ("student", f"T{s}"), eval_seeds, concept, std) for s in seeds])
    res["student + student-trained adapter (1 step)"] = harness.mean_std(
        [score(b, ("student", f"S{s}"), eval_seeds, concept, std) for s in seeds])
    res["teacher alone (25-step DDIM, CFG 3)"] = harness.mean_std(
        [score(b, (), eval_seeds, concept, std, 25, 3.0, standard=False)])
    res["teacher + teacher-trained adapter (25-step DDIM, CFG 3)"] = harness.mean_std(
        [score(b, (f"T{s}",), eval_seeds, concept, std, 25, 3.0, standard=False) for s in seeds])
    print(f"\n{'setting':58s} {'concept':>15s} {'prompt':>15s} {'alignment':>15s} {'FD':>13s}")
    def cell(r: dict, k: str, d: int = 3) -> str:
        return f"{r[k]:.{d}f} ± {r[k + '_std']:.{d}f}" if k in r else "-"

    for name, r in res.items():
        print(f"{name:58s} {cell(r, 'concept_concept'):>15s} {cell(r, 'concept_prompt'):>15s} "
              f"{cell(r, 'alignment'):>15s} {cell(r, 'fd', 0):>13s}")
    record = {"settings": vars(a), "seeds": seeds, "eval_seeds": eval_seeds, "results": res,
              "machine": harness.machine_info()}
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps(record, indent=2))
    if a.figure:
        s0, prompts = seeds[0], concept[:6] + std[:2]
        rows = [b.images(prompts, ("student",), 0), b.images(prompts, ("student", f"T{s0}"), 0),
                b.images(prompts, ("student", f"S{s0}"), 0), b.images(prompts, (f"T{s0}",), 0, 25, 3.0)]
        save_grid(rows, ["student 1-step", "+ teacher-trained", "+ student-trained", "teacher+adapter 25-step"],
                  Path(a.figure), captions=prompts)
    return 0


if __name__ == "__main__":
    sys.exit(main())
