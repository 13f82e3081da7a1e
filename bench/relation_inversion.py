"""Relation inversion on the tiny world: learn "<R>" from exemplars, use it with the one-step student.

Per training seed, two tokens are learned on the shipped teacher (``wadi relation``,
ReVersion's settings) from 10 exemplar renders whose captions put the token where the
relation goes and never say it: ``<R>`` from "X left of Y" scenes (side by side) and ``<A>``
from "X above Y" scenes (stacked).  Images for 64 new prompts "a C1 S1 <token> a C2 S2" are
scored with the tiny world's classifier: ``axis`` = two objects in the relation's layout (side by
side for ``<R>``, which "left of"/"right of" share; stacked for ``<A>``), ``order`` = that with X
first (left / top), ``order_of_decided`` = X first among the images where X and Y can be told
apart (0.5 = chance).  Baselines: the initializer word "and", a random vector with a typical token
norm, and the words "left of" / "above".
Both the teacher (25-step DDIM, CFG 3) and the WaDi student (one step) generate. ::

    OMP_NUM_THREADS=1 python bench/relation_inversion.py --student outputs/student/student.lorad.safetensors \\
        --out outputs/relation_bench --json docs/perf/relation_inversion.json --figure docs/img/relation_inversion.png
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import harness
import torch

harness.load_package()
from safetensors.torch import save_file  # noqa: E402
from wadi_lorad.trainer.config import apply_overrides  # noqa: E402
from wadi_lorad.trainer.relation import RelationConfig  # noqa: E402
from wadi_lorad.trainer.relation_train import RelationTrainer  # noqa: E402
from wadi_lorad.trainer.sampling import save_grid  # noqa: E402
from wadi_lorad.trainer.tinyworld.adapter_eval import AdapterBench  # noqa: E402
from wadi_lorad.trainer.tinyworld.concepts import relation_prompts, relation_scores, write_relation_folder  # noqa: E402
from wadi_lorad.trainer.tinyworld.metrics import DEFAULT_TEACHER  # noqa: E402


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--student", required=True)
    p.add_argument("--out", default="outputs/relation_bench")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--eval-seeds", default="0,1")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--exemplars", type=int, default=10)
    p.add_argument("--n", type=int, default=64, help="evaluation prompts")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", default="")
    p.add_argument("--figure", default="")
    return p.parse_args(argv)


def train(a: argparse.Namespace, layout: str, seed: int) -> Path:
    data = write_relation_folder(Path(a.out) / f"data-{layout}", a.exemplars, seed=0, layout=layout)
    tag = f"{layout}-seed{seed}"
    cfg = apply_overrides(RelationConfig(), [
        ("model.base", str(DEFAULT_TEACHER)), ("data.images", str(data)), ("train.seed", str(seed)),
        ("train.max_steps", str(a.steps)), ("output.dir", str(Path(a.out) / tag)), ("output.force", "true"),
        ("output.sample_every", "0"), ("output.checkpoint_every", "0"), ("output.name", tag)])
    t0 = time.perf_counter()
    path = RelationTrainer(cfg, progress=False).run()["embedding"]
    print(f"trained {tag} in {time.perf_counter() - t0:.0f} s", flush=True)
    return path


def random_token(b: AdapterBench, path: Path, seed: int = 0) -> Path:
    """A random direction with the mean norm of the vocabulary's embeddings (a 'learned nothing' token)."""
    table = b.bb.text[0][1].get_input_embeddings().weight.detach()
    v = torch.randn(1, table.shape[1], generator=torch.Generator().manual_seed(seed))
    save_file({"emb_params": (v / v.norm() * table.norm(dim=1).mean()).contiguous()}, str(path))
    return path


KEYS = ("axis", "order", "order_of_decided", "exact")


def evaluate(b: AdapterBench, word: str, eval_seeds: list[int], n: int, one_step: bool,
             layout: str = "horizontal") -> dict[str, float]:
    """Relation scores in ``layout`` (side by side for left-of, stacked for above), mean over seeds."""
    prompts = [replace(p, text=p.text.replace("<R>", word)) for p in relation_prompts(n, seed=1)]
    texts = [p.text for p in prompts]
    rows = []
    for s in eval_seeds:
        imgs = b.images(texts, ("student",), s) if one_step else b.images(texts, (), s, 25, 3.0)
        rows.append(relation_scores(imgs, prompts, layout))
    return {k: statistics.fmean(r[k] for r in rows if r[k] == r[k]) if any(r[k] == r[k] for r in rows)
            else float("nan") for k in KEYS}


def main(argv=None) -> int:
    a = parse(argv)
    torch.set_num_threads(a.threads)
    seeds = [int(s) for s in a.seeds.split(",")]
    eval_seeds = [int(s) for s in a.eval_seeds.split(",")]
    files = {(lay, s): train(a, lay, s) for s in seeds for lay in ("horizontal", "vertical")}
    b = AdapterBench(a.student)
    tokens = {key: b.add_embedding(f, f"{key[0]}{key[1]}") for key, f in files.items()}
    tokens[("random", 0)] = b.add_embedding(random_token(b, Path(a.out) / "random.safetensors"), "random0")
    res: dict[str, dict] = {}
    for one_step, how in ((True, "student 1-step"), (False, "teacher 25-step CFG 3")):
        res[f"<R> learned from 'left of' exemplars | {how}"] = harness.mean_std(
            [evaluate(b, tokens[("horizontal", s)], eval_seeds, a.n, one_step) for s in seeds])
        for label, word in (("'and' (the initializer)", "and"), ("random token", tokens[("random", 0)]),
                            ("the words 'left of'", "left of")):
            res[f"{label} | {how}"] = harness.mean_std([evaluate(b, word, eval_seeds, a.n, one_step)])
        # The 'above' token in its own layout (stacked), beside the words and the initializer there.
        res[f"<A> learned from 'above' exemplars [stacked] | {how}"] = harness.mean_std(
            [evaluate(b, tokens[("vertical", s)], eval_seeds, a.n, one_step, "vertical") for s in seeds])
        for label, word in (("'and' (the initializer) [stacked]", "and"), ("the words 'above' [stacked]", "above")):
            res[f"{label} | {how}"] = harness.mean_std([evaluate(b, word, eval_seeds, a.n, one_step, "vertical")])
    print("\naxis = two objects in the relation's layout (side by side; [stacked]: one above the other); "
          "order|decided = X first among the images where X and Y can be told apart (0.5 = chance)")
    print(f"{'prompt relation | generator':66s} {'axis':>15s} {'X first':>15s} {'order|decided':>15s} {'exact':>15s}")
    for name, r in res.items():
        print(f"{name:66s} " + " ".join(f"{r[k]:.3f} ± {r[k + '_std']:.3f}".rjust(15) for k in KEYS))
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps({"settings": vars(a), "results": res, "machine": harness.machine_info()},
                                           indent=2))
    if a.figure:
        ps = [p.text for p in relation_prompts(8, seed=1)]
        rows, labels = [], []
        for label, word in (("'and'", "and"), ("<R> (left of)", tokens[("horizontal", seeds[0])]),
                            ("<A> (above)", tokens[("vertical", seeds[0])])):
            rows.append(b.images([p.replace("<R>", word) for p in ps], ("student",), 0))
            labels.append(f"{label} 1-step")
        save_grid(rows, labels, Path(a.figure), captions=ps)
    return 0


if __name__ == "__main__":
    sys.exit(main())
