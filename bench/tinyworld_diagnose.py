"""Where a tiny-world one-step student loses to the teacher's 25 steps: attributes, confusions, output spread.

For each student parameter file of ``bench/tinyworld_study.py`` (``outputs/study/<run>/student_params*.safetensors``)
and for the teacher, on the fixed evaluation (256 prompts, noise seed 0):

* per-attribute accuracy (count, colour, shape, size, position, background) from the scorer;
* the colour and shape confusions on one-object prompts (what the prompt said -> what was drawn);
* the per-channel spread of the latents against the teacher's 25-step latents from the same noise
  (residual input noise that the one-step formula amplifies shows as extra spread);
* once, the teacher's own eps error at t = 999, 900, 700, 500 and 200 on real renders;
* once, how much each latent channel matters to the scores: the teacher's 25-step latents with
  Gaussian noise added to one channel, and with channel 3 taken from the teacher's own one step
  (does the one-step residue in channel 3 cost anything?).

Results go to stdout and, with ``--json``, to a file (paths reduced for sharing).
"""

from __future__ import annotations

import argparse
import math
from collections import Counter
from pathlib import Path

import harness
import torch

harness.load_package()
from wadi_lorad.lorad.onestep import alpha_bar_at  # noqa: E402
from wadi_lorad.trainer.demo import STUDY_BASE_OVERRIDES, DemoSettings, demo_config  # noqa: E402
from wadi_lorad.trainer.sampling import one_step, teacher_multistep  # noqa: E402
from wadi_lorad.trainer.tinyworld import metrics  # noqa: E402
from wadi_lorad.trainer.tinyworld.data import render_prompts  # noqa: E402
from wadi_lorad.trainer.tinyworld.domain import parse_caption  # noqa: E402


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("students", nargs="*", help="student parameter files (student_params*.safetensors)")
    p.add_argument("--study", default="outputs/study", help="the study's folder (prompts and text cache)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--timestep", type=int, default=999,
                   help="the students' one-step timestep (their vsd.timestep); the teacher rows stay at 999")
    p.add_argument("--json", default="", help="also write the results here")
    return p.parse_args(argv)


def confusions(scenes, prompts: list[str]) -> dict[str, object]:
    """Accuracy and the most frequent mistakes for colour and shape on one-object prompts."""
    out: dict[str, object] = {}
    for attr in ("color", "shape"):
        tally: Counter = Counter()
        for prompt, scene in zip(prompts, scenes):
            spec = parse_caption(prompt)
            if len(spec.objects) == 1 and len(scene.objects) == 1 and getattr(spec.objects[0], attr):
                tally[(getattr(spec.objects[0], attr), getattr(scene.objects[0], attr))] += 1
        total = sum(tally.values())
        out[f"one_object_{attr}_accuracy"] = sum(v for (a, b), v in tally.items() if a == b) / max(1, total)
        out[f"one_object_{attr}_mistakes"] = [f"{a} -> {b}: {v}" for (a, b), v in tally.most_common() if a != b][:6]
    return out


def decode_all(latents: torch.Tensor, decode) -> torch.Tensor:
    """Images of ``latents``, decoded 64 at a time (the whole eval set at once would hold every activation)."""
    return torch.cat([decode(latents[i: i + 64]).cpu() for i in range(0, len(latents), 64)])


def score(name: str, latents: torch.Tensor, ref: torch.Tensor, decode, prompts: list[str]) -> dict[str, object]:
    images = decode_all(latents, decode)
    row: dict[str, object] = {k: round(v, 4) for k, v in metrics.evaluate_images(images, prompts).items()}
    _, scenes = metrics.classify(images)
    row.update(confusions(scenes, prompts))
    row["latent_std"] = [round(float(v), 3) for v in latents.std(dim=(0, 2, 3))]
    row["teacher_latent_std"] = [round(float(v), 3) for v in ref.std(dim=(0, 2, 3))]
    print(name, {k: v for k, v in row.items() if not k.endswith("mistakes")}, flush=True)
    return row


def teacher_eps_error(d, prompts: list[str]) -> list[dict[str, float]]:
    """The teacher's eps MSE and x0 MSE at a few t on real renders of the prompts (fixed noise)."""
    x0 = d.bb.encode_dist(render_prompts(prompts, seed=0) * 2 - 1)[0]
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(0))
    out = []
    with torch.no_grad(), d.views.teacher() as m:
        for t in (999, 900, 700, 500, 200):
            ab = float(d.bb.alphas_cumprod[t])
            x_t = math.sqrt(ab) * x0 + math.sqrt(1 - ab) * noise
            eps = torch.cat([d.bb.eps(m, x_t[i: i + 64], torch.full((len(x_t[i: i + 64]),), t),
                                      d.extra_cond.index(slice(i, i + 64))) for i in range(0, len(x0), 64)])
            x0_hat = (x_t - math.sqrt(1 - ab) * eps) / math.sqrt(ab)
            out.append({"t": t, "eps_mse": round(float(((eps - noise) ** 2).mean()), 5),
                        "x0_mse": round(float(((x0_hat - x0) ** 2).mean()), 4),
                        "x0_hat_std": [round(float(v), 3) for v in x0_hat.std(dim=(0, 2, 3))],
                        "data_std": [round(float(v), 3) for v in x0.std(dim=(0, 2, 3))]})
            print("teacher eps at t", out[-1], flush=True)
    return out


def channel_sensitivity(teacher: torch.Tensor, teacher_one: torch.Tensor, decode, prompts: list[str],
                        spread: float = 0.53) -> dict[str, dict[str, float]]:
    """Scores of the teacher's 25-step latents with one channel disturbed (fixed noise, seed 1)."""
    def scores(lat: torch.Tensor) -> dict[str, float]:
        r = metrics.evaluate_images(decode_all(lat, decode), prompts)
        return {k: round(r[k], 4) for k in ("alignment", "fd", "acc_color", "acc_shape")}

    gen = torch.Generator().manual_seed(1)
    out = {"unchanged": scores(teacher)}
    for c in range(teacher.shape[1]):
        lat = teacher.clone()
        lat[:, c] += spread * torch.randn(lat[:, c].shape, generator=gen)
        out[f"channel {c} + noise of std {spread}"] = scores(lat)
    lat = teacher.clone()
    lat[:, 3] = teacher_one[:, 3]
    out["channel 3 from the teacher's one step"] = scores(lat)
    for k, v in out.items():
        print("teacher-25,", k, v, flush=True)
    return out


def main(argv=None) -> int:
    from safetensors.torch import load_file
    from wadi_lorad.trainer.distill import Distiller

    a = parse(argv)
    torch.set_num_threads(a.threads)
    study = Path(a.study)
    s = DemoSettings(out=study / ".diagnose", steps=1, seed=0)
    s.overrides = [("output.sample_every", "0"), ("output.checkpoint_every", "0"),
                   ("data.cache_dir", str(study / ".text_cache"))]
    prompts = metrics.fixed_eval_prompts(256)
    d = Distiller(demo_config(s, study / "prompts.txt", STUDY_BASE_OVERRIDES), extra_prompts=prompts, progress=False,
                  log=lambda *_: None)
    d.setup()
    noise = metrics.eval_noise(len(prompts), 0, d.latent)
    batches = [(slice(i, i + 64), noise[i: i + 64]) for i in range(0, len(prompts), 64)]
    with torch.no_grad(), d.views.teacher() as m:
        teacher = torch.cat([teacher_multistep(d.bb, m, d.extra_cond.index(sl), d.null, z, 25, 3.0) for sl, z in batches])
        teacher_one = torch.cat([one_step(d.bb, m, d.extra_cond.index(sl), z, d.settings.alpha_bar_T) for sl, z in batches])
    result = {"teacher, 25 steps CFG 3": score("teacher-25", teacher, teacher, d.bb.decode, prompts),
              "teacher, 1 step": score("teacher-1", teacher_one, teacher, d.bb.decode, prompts)}
    ab_student = alpha_bar_at(d.bb.alphas_cumprod, a.timestep)
    for f in a.students:
        d.views.student.load_state(load_file(f), f)
        with torch.no_grad(), d.views.student_view() as m:
            lat = torch.cat([one_step(d.bb, m, d.extra_cond.index(sl), z, ab_student, a.timestep) for sl, z in batches])
        name = f"{Path(f).parent.name}/{Path(f).stem}"
        result[name] = score(name, lat, teacher, d.bb.decode, prompts)
    result["teacher_eps_error"] = teacher_eps_error(d, prompts)
    result["channel_sensitivity"] = channel_sensitivity(teacher, teacher_one, d.bb.decode, prompts)
    if a.json:
        harness.write_json(a.json, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
