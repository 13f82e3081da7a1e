"""Learning curves of WaDi on the tiny world: alignment and FD every N steps, one run per call.

One run = one config (the demo's recipe plus ``--set key=value`` overrides) and one training seed.
Every ``--eval-every`` steps the student (its EMA when on) generates the 256 fixed evaluation
prompts x 2 noise seeds in one step and the classifier scores them; the curve is appended to
``<out>/<name>/curve.json`` as it grows, so a long run can be watched (and plotted) while it runs.
A finished run is not repeated.  ``--stop-at N`` ends a run at step N under the schedule of ``--steps``
(its points are the full run's first ones: time to quality at a fine ``--eval-every``).  With
``--checkpoint-every N`` the run keeps the trainer's own resume checkpoints: a run that was killed
continues from its last one, and a run stopped with ``--stop-at`` can be continued to a later
``--stop-at`` (or to the end), with the points it would have had in one go (curves of 10,000 steps
are spread over several sittings this way).  ``--plot`` draws every curve under ``--out`` into one figure.

    OMP_NUM_THREADS=1 python bench/tinyworld_study.py --name lorad-s0 --steps 3000 --eval-every 500
    python bench/tinyworld_study.py --plot docs/img/tinyworld_curves.png --json docs/perf/tinyworld_study.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import time
from pathlib import Path

import harness
import torch

harness.load_package()
from safetensors.torch import load_file, save_file  # noqa: E402
from wadi_lorad.lorad.fsutil import atomic_save, atomic_write_text  # noqa: E402
from wadi_lorad.trainer.checkpoint import checkpoint_root, list_checkpoints  # noqa: E402
from wadi_lorad.trainer.demo import STUDY_BASE_OVERRIDES, DemoSettings, demo_config  # noqa: E402
from wadi_lorad.trainer.tinyworld import domain, metrics  # noqa: E402


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="outputs/study")
    p.add_argument("--name", default="")
    p.add_argument("--config", default="", help="a YAML config (e.g. configs/tinyworld-quality.yaml) instead of "
                                                 "the demo's recipe; --set still applies on top")
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--eval-every", type=int, default=500)
    p.add_argument("--stop-at", type=int, default=0,
                   help="stop after this many steps; the learning-rate schedule still spans --steps, so the points "
                        "are those of the full run (time to quality at a fine --eval-every without the full run)")
    p.add_argument("--checkpoint-every", type=int, default=0,
                   help="keep a resume checkpoint every N steps (a multiple of --eval-every) and at the end: a killed "
                        "run continues from its last one, a run stopped at --stop-at can be continued; 0 = none")
    p.add_argument("--eval-prompts", type=int, default=256,
                   help="how many of the fixed evaluation prompts to score (the study's figures use all 256)")
    p.add_argument("--seed", type=int, default=0, help="training seed (data stream and adapter init)")
    p.add_argument("--eval-seeds", default="0,1")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--shadow-ema", type=float, default=0.99,
                   help="also track an EMA of the student at this decay (when the config has none) and score it "
                        "at every point beside the raw student; 0 = off")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override (repeatable)")
    p.add_argument("--export", action="store_true",
                   help="at the end, write the run's outputs as `wadi distill` does (the .lorad student in "
                        "<out>/<name>/run/) with the trainer's own exporter")
    p.add_argument("--plot", default="", help="draw every curve under --out into this PNG and exit")
    p.add_argument("--json", default="", help="with --plot: also collect the drawn curves (all, or --only's) into "
                                               "this JSON")
    p.add_argument("--only", default="", help="with --plot: draw only the runs whose name matches this regex")
    p.add_argument("--include-json", action="append", default=[], metavar="JSON",
                   help="with --plot (repeatable): also draw the curves kept in a JSON an earlier --plot --json wrote "
                        "(docs/perf/), for runs that are not under --out; a run under --out wins over its namesake")
    return p.parse_args(argv)


def evaluate(d, prompts: list[str], seeds: list[int], ema=None) -> dict[str, float]:
    """Scores of the raw student, or of ``ema`` applied to it (images by the ablation's sampler)."""
    from tinyworld_ablation import student_images

    per = []
    applied = ema.applied() if ema is not None else contextlib.nullcontext()
    with torch.no_grad(), d.views.student_view() as m, applied:
        for seed in seeds:
            noise = metrics.eval_noise(len(prompts), seed, d.latent)
            imgs = student_images(d.bb, m, d.extra_cond, noise, d.settings.alpha_bar_T, d.settings.timestep)
            per.append(metrics.evaluate_images(imgs, prompts))
    return metrics.summarize(per)


def run(a: argparse.Namespace) -> Path:
    from wadi_lorad.trainer.config import apply_overrides, load_yaml
    from wadi_lorad.trainer.distill import Distiller

    torch.set_num_threads(a.threads)
    out = Path(a.out) / a.name
    curve_path = out / "curve.json"
    stop = a.stop_at or a.steps
    before = json.loads(curve_path.read_text()) if curve_path.is_file() else {}
    resume_at = continue_from(a, before, curve_path, stop)
    if before.get("done") and resume_at is None:
        print(f"{a.name}: done before, kept")
        return curve_path
    prompts_file = Path(a.out) / "prompts.txt"
    if not prompts_file.is_file():
        prompts_file.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(prompts_file, "\n".join(domain.sample_captions(DemoSettings().num_prompts, 0)) + "\n")
    s = DemoSettings(out=out, steps=a.steps, seed=a.seed)
    sets = [tuple(kv.split("=", 1)) for kv in a.set]
    s.overrides = [("output.sample_every", "0"), ("output.checkpoint_every", "0"), ("adapter.seed", str(a.seed)),
                   ("data.cache_dir", str(Path(a.out) / ".text_cache"))] + sets
    cfg = demo_config(s, prompts_file, STUDY_BASE_OVERRIDES)
    if a.config:
        base = [("model.base", cfg.model.base), ("data.prompts", cfg.data.prompts), ("output.dir", cfg.output.dir),
                ("output.force", "true"), ("data.cache_dir", cfg.data.cache_dir), ("train.seed", str(a.seed)),
                ("adapter.seed", str(a.seed)), ("train.max_steps", str(a.steps)),
                ("output.sample_every", "0"), ("output.checkpoint_every", "0")]
        cfg = apply_overrides(load_yaml(a.config), base + sets)
    if resume_at is not None:
        cfg.resume = "latest"
    prompts = metrics.fixed_eval_prompts(a.eval_prompts)
    seeds = [int(x) for x in a.eval_seeds.split(",")]
    d = Distiller(cfg, extra_prompts=prompts, progress=False)
    d.setup()
    shadow = d.ema  # the config's EMA, else a shadow one: both are scored beside the raw student
    if shadow is None and a.shadow_ema > 0:
        from wadi_lorad.trainer.ema import EMA

        shadow = EMA(d.views.student.params, a.shadow_ema)
    curve = {"name": a.name, "seed": a.seed, "threads": a.threads, "overrides": dict(sets),
             "config": a.config, "steps": a.steps, "points": [], "done": False}
    if stop != a.steps:
        curve["stop_at"] = stop
    if a.checkpoint_every:
        curve["checkpoint_every"] = a.checkpoint_every
    train_s = 0.0
    if resume_at is not None:
        if d.step != resume_at:
            raise SystemExit(f"error: {out / 'run'} resumed at step {d.step}, not at step {resume_at} where "
                             f"{curve_path} has its last checkpointed point")
        # the points after the checkpoint (written before the run was killed) are computed again
        curve["points"] = [p for p in before["points"] if p["step"] <= d.step]
        # where each later sitting took over, and with how many threads (the first sitting's are in "threads")
        curve["continued"] = before.get("continued", []) + [{"step": d.step, "threads": a.threads}]
        train_s = curve["points"][-1]["train_s"]
        if shadow is not None and shadow is not d.ema:
            shadow.load_state_dict(load_file(str(shadow_file(out, d.step))))
        print(f"{a.name}: continuing from step {d.step} ({curve_path})", flush=True)
    losses: list[dict[str, float]] = []

    def record() -> None:
        t0 = time.perf_counter()
        sc = evaluate(d, prompts, seeds)
        pt = {"step": d.step, "train_s": round(train_s, 1),
              "alignment": sc["alignment_mean"], "alignment_std": sc["alignment_std"],
              "fd": sc["fd_mean"], "fd_std": sc["fd_std"], "fd_shift": sc["fd_shift_mean"], "spread": sc["spread_mean"]}
        # which attributes fail (colour and shape are where one step loses to the teacher's 25 steps)
        pt.update({k[:-5]: sc[k] for k in sc if k.startswith("acc_") and k.endswith("_mean")})
        if shadow is not None and d.step > 0:
            se = evaluate(d, prompts, seeds, shadow)
            decay = d.cfg.train.ema_decay if shadow is d.ema else a.shadow_ema
            pt.update(ema_decay=decay, ema_alignment=se["alignment_mean"], ema_fd=se["fd_mean"],
                      ema_fd_shift=se["fd_shift_mean"], ema_spread=se["spread_mean"])
        for k in ("loss_student", "loss_fake", "grad_norm_student", "grad_norm_fake"):
            if losses:
                pt[k] = sum(x[k] for x in losses) / len(losses)
        losses.clear()
        pt["eval_s"] = round(time.perf_counter() - t0, 1)
        curve["points"].append(pt)
        atomic_write_text(curve_path, json.dumps(curve, indent=1))
        ema_txt = f", EMA {pt['ema_alignment']:.3f} / {pt['ema_fd']:.0f}" if "ema_fd" in pt else ""
        print(f"{a.name} step {d.step}: alignment {pt['alignment']:.3f} FD {pt['fd']:.0f}{ema_txt} "
              f"({train_s:.0f} s training)", flush=True)

    def keep_checkpoint() -> None:
        # the shadow EMA (when the config has none) first, named by its step: a run killed between the two
        # writes resumes from the previous checkpoint, whose shadow file is still there
        if shadow is not None and shadow is not d.ema:
            atomic_save(shadow_file(out, d.step), lambda tmp: save_file(shadow.state_dict(), str(tmp)))
        d.save_checkpoint()
        kept = set(saved_steps(d.out))
        for f in out.glob("shadow_ema/step-*.safetensors"):
            if int(f.stem.split("-")[1]) not in kept:
                f.unlink()

    out.mkdir(parents=True, exist_ok=True)
    if resume_at is None:
        record()
    while d.step < stop:
        t0 = time.perf_counter()
        losses.append(d.train_step())
        if shadow is not None and shadow is not d.ema:  # the trainer updates its own
            shadow.update()
        train_s += time.perf_counter() - t0
        if d.step % a.eval_every == 0 or d.step == stop:
            record()
        if a.checkpoint_every and (d.step % a.checkpoint_every == 0 or d.step == stop):
            keep_checkpoint()
    save_outputs(d, shadow, prompts, out)
    if a.export:
        from wadi_lorad.trainer.export import export_outputs

        d.train_time_s = train_s
        if not a.checkpoint_every:  # else kept at the last step already
            d.save_checkpoint()
        # relative to the run's folder: curve.json is collected into shared JSON (--plot --json), no local paths
        curve["exports"] = {k: Path(os.path.relpath(v, out)).as_posix() for k, v in export_outputs(d).items()}
    curve["done"] = True
    atomic_write_text(curve_path, json.dumps(curve, indent=1))
    return curve_path


def continue_from(a: argparse.Namespace, before: dict, curve_path: Path, stop: int) -> int | None:
    """The step a run under ``curve_path`` continues from, or None (a new run, or a finished one to keep).

    Refuses, naming the curve, a call that asks for another run under the same name: other settings, or a
    finished run of another length that cannot be continued."""
    if not before:
        return None
    asked = {"seed": a.seed, "config": a.config, "overrides": dict(kv.split("=", 1) for kv in a.set),
             "steps": a.steps}
    differ = [f"{k} {before.get(k)!r} (asked: {v!r})" for k, v in asked.items() if before.get(k) != v]
    ended = before.get("stop_at", before.get("steps"))
    saved = saved_steps(curve_path.parent / "run")
    last = saved[-1] if saved else None
    if before.get("done"):
        if not differ and ended == stop:
            return None
        if not differ and stop > ended and last == ended:
            return last
        why = "" if differ or stop < ended else " and kept no checkpoint at its end (--checkpoint-every)"
        raise SystemExit(f"error: {curve_path} holds a finished run of --steps {before.get('steps')} stopped at step "
                         f"{ended}{why}; this call asks for --steps {a.steps} stopped at step {stop}"
                         + (f" with {'; '.join(differ)}" if differ else "") + ": give it another --name")
    if last is None:
        return None  # killed before its first checkpoint: start over
    if last > stop:
        raise SystemExit(f"error: {curve_path} holds an unfinished run checkpointed at step {last}, past the asked "
                         f"end (step {stop}): continue it to step {last} or later, or give this one another --name")
    if differ:
        raise SystemExit(f"error: {curve_path} holds an unfinished run with {'; '.join(differ)}: continue it with "
                         "its own settings, or give this one another --name")
    if not any(p["step"] == last for p in before.get("points", [])):
        raise SystemExit(f"error: {curve_path} has no point at step {last}, where its last checkpoint is: "
                         "checkpoints must fall on evaluation steps (--checkpoint-every a multiple of --eval-every)")
    return last


def saved_steps(run_dir: Path) -> list[int]:
    """The steps of the trainer's complete checkpoints in ``run_dir``, oldest first."""
    return [int(p.name.split("-")[1]) for p in list_checkpoints(checkpoint_root(run_dir))]


def shadow_file(out: Path, step: int) -> Path:
    return out / "shadow_ema" / f"step-{step:08d}.safetensors"


def save_outputs(d, shadow, prompts: list[str], out: Path) -> None:
    """The student's parameters (raw and EMA) and a grid of its first eval images, to look at."""
    from wadi_lorad.trainer.sampling import one_step, save_grid

    save_file({k: v.contiguous() for k, v in d.views.student.state().items()}, str(out / "student_params.safetensors"))
    rows, labels = [], []
    noise = metrics.eval_noise(len(prompts), 0, d.latent)[:8]
    cond = d.extra_cond.index(slice(0, 8))
    for label, ema in (("raw", None), ("EMA", shadow)):
        if label == "EMA" and ema is None:
            continue
        applied = ema.applied() if ema is not None else contextlib.nullcontext()
        with torch.no_grad(), d.views.student_view() as m, applied:
            rows.append(d.bb.decode(one_step(d.bb, m, cond, noise, d.settings.alpha_bar_T, d.settings.timestep)))
            if label == "EMA":
                save_file({k: v.contiguous() for k, v in d.views.student.state().items()},
                          str(out / "student_params_ema.safetensors"))
        labels.append(f"student ({label}), step {d.step}")
    save_grid(rows, labels, out / "grid.png", captions=prompts[:8])


# Reference lines on the plot: the teacher's fixed-eval scores (README, same 256 prompts x 2 seeds)
# and the quality targets (0.8x the teacher's 25-step alignment, 1.3x its FD).
TEACHER_1STEP = {"alignment": 0.023, "fd": 917}
TEACHER_25STEP_CFG3 = {"alignment": 0.391, "fd": 331}
TARGET = {"alignment": 0.31, "fd": 430}


def plot(a: argparse.Namespace) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_name = {c["name"]: c for c in (json.loads(p.read_text()) for p in sorted(Path(a.out).glob("*/curve.json")))}
    # Earlier rounds' curves from their committed JSON: a fresh machine has no outputs/study, and a new
    # round is drawn beside the old ones without training them again.  A run under --out wins.
    for path in a.include_json:
        try:
            for c in json.loads(Path(path).read_text())["curves"]:
                by_name.setdefault(c["name"], c)
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise SystemExit(f"error: --include-json {path}: expected a JSON written by --plot --json with a "
                             f"'curves' list of named curves ({e})") from e
    curves = list(by_name.values())
    drawn = [c for c in curves if re.search(a.only, c["name"])] if a.only else curves
    # Runs named <recipe>-s<seed> with several seeds are drawn as one mean line with a +-sd band of their
    # EMA scores; single-seed runs as before (solid EMA, dashed raw).
    groups: dict[str, list[dict]] = {}
    for c in drawn:
        groups.setdefault(re.sub(r"-s\d+$", "", c["name"]), []).append(c)
    # tab20 pairs a dark and a light shade of each hue, which read as one recipe; up to 10 groups get tab10's
    # distinct hues
    palette = plt.get_cmap("tab10" if len(groups) <= 10 else "tab20").colors
    fig, axes = plt.subplots(1, 2, figsize=(13, 5.5))
    for i, (recipe, members) in enumerate(sorted(groups.items())):
        color = palette[i % len(palette)]
        if len(members) > 1 and all("ema_fd" in p for c in members for p in c["points"][1:]):
            steps = sorted(set.intersection(*({p["step"] for p in c["points"] if p["step"] > 0} for c in members)))
            for ax, key in zip(axes, ("alignment", "fd")):
                vals = torch.tensor([[next(p[f"ema_{key}"] for p in c["points"] if p["step"] == s) for s in steps]
                                     for c in members])
                mean, sd = vals.mean(0), vals.std(0)
                ax.plot(steps, mean, marker="o", lw=2, color=color, label=f"{recipe} (EMA, mean of {len(members)} seeds)")
                ax.fill_between(steps, mean - sd, mean + sd, color=color, alpha=0.25)
            continue
        for c in members:
            pts = [p for p in c["points"] if p["step"] > 0]
            st = [p["step"] for p in pts]
            has_ema = bool(pts) and "ema_fd" in pts[0]
            for ax, key in zip(axes, ("alignment", "fd")):
                ax.plot([0] + st, [c["points"][0][key]] + [p[key] for p in pts], ls="--", lw=0.8, color=color,
                        alpha=0.6, label=None if has_ema else
                        f"{c['name']} ({'EMA: see its note' if 'note' in c else 'raw only'})")
                if has_ema:
                    ax.plot(st, [p.get(f"ema_{key}") for p in pts], marker=".", color=color, label=f"{c['name']} (EMA)")
    for ax, key, title in ((axes[0], "alignment", "alignment (higher is better)"),
                           (axes[1], "fd", "FD (lower is better)")):
        ax.axhline(TEACHER_25STEP_CFG3[key], color="k", lw=1, label="teacher 25-step CFG 3")
        ax.axhline(TEACHER_1STEP[key], color="gray", lw=1, ls=":", label="teacher 1-step")
        ax.axhline(TARGET[key], color="red", lw=1, ls="-.", label="quality target")
        ax.set_xlabel("student steps (batch 16)")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=6.5, loc="upper right", ncol=2)
    fig.suptitle("WaDi on the tiny world: thick = mean ± sd over the training seeds (EMA 0.99; how many: legend); "
                 "thin = one seed, solid EMA, dashed raw")
    fig.tight_layout()
    fig.savefig(a.plot, dpi=110)
    print(f"wrote {a.plot}")
    if a.json:
        # the JSON behind the figure: with --only, the drawn runs alone
        both = [p for c in drawn for p in c["points"] if "ema_fd" in p and p["step"] > 0]
        summary = {"ema_fd_below_raw": sum(p["ema_fd"] < p["fd"] for p in both), "points_with_both": len(both)}
        atomic_write_text(Path(a.json), json.dumps({"summary": summary, "curves": drawn}, indent=1))
        print(f"wrote {a.json}: EMA FD below the raw student's at {summary['ema_fd_below_raw']} of "
              f"{summary['points_with_both']} points")


def main(argv=None) -> int:
    a = parse(argv)
    if a.plot:
        plot(a)
        return 0
    if a.include_json:
        raise SystemExit("error: --include-json only adds curves to a --plot")
    if not a.name:
        raise SystemExit("error: --name is required for a run")
    if a.checkpoint_every < 0 or (a.checkpoint_every and a.checkpoint_every % a.eval_every):
        raise SystemExit(f"error: --checkpoint-every {a.checkpoint_every} must be a multiple of --eval-every "
                         f"({a.eval_every}), so that a continued run starts at one of its points; 0 = none")
    if not 0 <= a.stop_at <= a.steps:
        raise SystemExit(f"error: --stop-at {a.stop_at} must lie between 1 and --steps ({a.steps}); 0 = run them all")
    run(a)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
