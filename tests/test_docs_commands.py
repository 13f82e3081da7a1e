"""Every command shown in README.md and docs/*.md runs (docs as tests).

The commands are read from the documents' code blocks (``bash`` blocks and unlabelled
blocks; a line counts when it starts with a command word, so formulas stay out) and run
in bash, as written, in a temporary folder that holds what the docs assume:

* ``./sd15`` and ``./stable-diffusion-v1-5`` are the shipped tiny-world teacher,
  ``captions.txt`` tiny-world captions, ``my_dog/`` and ``exemplars/`` a few images;
* ``wadi``, ``lorad`` and ``python`` on ``PATH`` run this checkout (``-m wadi_lorad`` too).

Each documented command has exactly one entry in :data:`PLAN`: run it (with small step
counts appended as overrides, which win over earlier values), check the options of a
usage synopsis or a benchmark against its ``--help`` (and run instances of a synopsis on
the tiny world's own student), point to the test that runs it (``wadi demo``: the slow
demo test), or skip it for a stated reason.
A command that appears in the docs without an entry fails :func:`test_every_documented_command_has_a_plan`.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
COMMAND_WORDS = {"wadi", "lorad", "python", "make", "accelerate", "torchrun", "cd", "git", "bench/gpu/run.sh"}
TIMEOUT_S = 1800  # a hang guard only; nothing here depends on speed

# Small runs: appended after the documented arguments (the last value of a key wins).
DISTILL_SMALL = ("--train.max_steps 2 --train.batch_size 2 --adapter.student_rank 4 --adapter.fake_rank 2 "
                 "--output.sample_every 0 --output.checkpoint_every 0 --data.max_prompts 8")
FT_SMALL = ("--train.max_steps 2 --train.batch_size 2 --output.sample_every 0 --output.checkpoint_every 0 "
            "--prior.num_images 2 --prior.steps 2")
RELATION_SMALL = "--train.max_steps 2 --train.batch_size 2 --output.sample_every 0 --output.checkpoint_every 0"


@dataclass(frozen=True)
class Run:
    """Run the command (plus ``extra``); ``needs`` are workspace steps made first; ``makes`` must exist after."""

    extra: str = ""
    needs: tuple[str, ...] = ()
    makes: tuple[str, ...] = ()
    replace: tuple[tuple[str, str], ...] = ()  # (documented text, what runs here), each said why in PLAN
    server: bool = False  # a server: wait until it answers on --port, then stop it


@dataclass(frozen=True)
class Options:
    """A usage synopsis or a long benchmark: every ``--option`` it shows is accepted by ``help`` (a command).

    ``examples``: instances of a synopsis run on the workspace (the tiny world's student), each
    ``(command, needs)``.
    """

    help: str
    why: str
    examples: tuple[tuple[str, tuple[str, ...]], ...] = ()


@dataclass(frozen=True)
class Skip:
    why: str


@dataclass(frozen=True)
class Covered:
    """Run elsewhere: a slow end-to-end test, or a cheaper run of the same code path."""

    by: str
    check: str = ""  # a cheap command run here as well (e.g. ``make -n demo``)


PLAN: dict[str, Run | Options | Skip | Covered] = {
    # -- README.md ---------------------------------------------------------------------------
    "make demo": Covered("tests/test_distill_demo.py (slow: the real `wadi demo`, ~5 min) and "
                         "test_demo_writes_every_output", check="make -n -C {root} demo | grep -q 'wadi demo'"),
    "make test-comfyui": Covered("scripts/comfyui-tests.sh itself (CI's make test runs it with a real ComfyUI)",
                                 check="make -n -C {root} test-comfyui | grep -q 'scripts/comfyui-tests.sh'"),
    "make test": Covered("the CI job that runs it (the suite cannot run itself)",
                         check="make -n -C {root} test | grep -q 'pytest'"),
    "cd ComfyUI/custom_nodes": Skip("needs a ComfyUI checkout; the ComfyUI tests install the pack themselves"),
    "git clone https://github.com/comfyui-wadi/ComfyUI-WaDi": Skip("network (the public repository)"),
    "python -c \"import torch; print('torch==' + torch.__version__.split('+')[0])\" > keep-torch.txt": Run(
        makes=("keep-torch.txt",)),
    "python -m pip install -r ComfyUI-WaDi/requirements.txt -c keep-torch.txt": Skip(
        "network (package index); requirements.txt is installed by CI's set-up"),
    "wadi demo": Covered("tests/test_distill_demo.py (slow: the real `wadi demo`, ~5 min)"),
    "wadi distill --model.base ./stable-diffusion-v1-5 --data.prompts captions.txt": Run(
        f"{DISTILL_SMALL} --output.dir outputs/readme", makes=("outputs/readme/student.lorad.safetensors",)),
    "wadi distill --config run.yaml --adapter.kind lora": Run(
        "--output.dir outputs/lora", needs=("run.yaml",), makes=("outputs/lora/student.lora.safetensors",)),
    "accelerate launch -m wadi_lorad distill --config run.yaml": Run(
        "--output.dir outputs/accelerate", needs=("run.yaml",),
        makes=("outputs/accelerate/student.lorad.safetensors",)),
    "wadi sample --base ./sd15 --lorad outputs/distill/student.lorad.safetensors --prompt \"a cat\" --compare": Run(
        "--teacher-steps 2", needs=("student",), makes=("outputs/sample.png",)),
    "wadi personalize --model.base ./sd15 --data.images my_dog --data.instance_prompt \"a photo of sks dog\"": Run(
        f"{FT_SMALL} --output.dir outputs/personalize-readme",
        makes=("outputs/personalize-readme/personal.lorad.safetensors",)),
    "wadi relation --model.base ./sd15 --data.images exemplars": Run(
        f"{RELATION_SMALL} --output.dir outputs/relation-readme"),
    "wadi tab": Run("--port {port} --no-browser --root .", server=True),
    # -- docs/analysis.md --------------------------------------------------------------------
    "lorad analyze dmd2_sd15_unet.safetensors stable-diffusion-v1-5/unet fig1_dmd2 --title \"DMD2 vs SD1.5\"": Run(
        needs=("dmd2",), makes=("fig1_dmd2",)),
    "lorad analyze dmd2_sd15_unet.safetensors stable-diffusion-v1-5/unet fig1_dmd2_linear --include "
    "'(attn1|attn2)\\.(to_q|to_k|to_v|to_out\\.0)\\.weight$' --include 'ff\\.net' --force": Run(
        needs=("dmd2",), makes=("fig1_dmd2_linear",)),
    "lorad inspect FILE [--json] [--no-layers]": Options(
        "lorad inspect --help", "usage synopsis",
        examples=(("lorad inspect student.lorad.safetensors --json", ("student.lorad.safetensors",)),)),
    "lorad validate FILE [--arch ARCH | --model PATH] [--allow-partial]": Options(
        "lorad validate --help", "usage synopsis",
        examples=(("lorad validate student.lorad.safetensors --model ./sd15", ("student.lorad.safetensors",)),
                  ("lorad validate student.lorad.safetensors", ("student.lorad.safetensors",)))),
    "lorad merge BASE FILE OUT [--strength S] [--to diffusers|single] [--ldm-prefix P] [--dtype fp16|bf16|fp32]":
        Options(
        "lorad merge --help", "usage synopsis",
        examples=(("lorad merge ./sd15 student.lorad.safetensors merged", ("student.lorad.safetensors",)),)),
    "lorad extract BASE MERGED OUT.lorad.safetensors [--arch sd15] [--rank 256] [--tol 1e-3] [--preset paper-student] "
    "[--include REGEX] [--include-conv] [--dtype fp32|fp16|bf16] [--report STEM]": Options(
        "lorad extract --help", "usage synopsis",
        examples=(("lorad extract ./sd15/unet rotated_unet-sdv1-5.safetensors small.lorad.safetensors --arch sd15 "
                   "--rank 4 --report small", ("rotated",)),)),
    "lorad extract stable-diffusion-v1-5/unet rotated_unet-sdv1-5.safetensors wadi-sd15.lorad.safetensors --arch "
    "sd15 --rank 256 --preset paper-student --dtype fp16": Run(
        needs=("rotated",), makes=("wadi-sd15.lorad.safetensors",)),
    "lorad convert SRC DST [--arch ARCH]": Options("lorad convert --help", "usage synopsis"),
    "lorad analyze STUDENT TEACHER OUTDIR [--include REGEX] [--frac 0.3] [--write-swaps] [--title T]": Options(
        "lorad analyze --help", "usage synopsis",
        examples=(("lorad analyze student.lorad.safetensors ./sd15/unet student_analysis",
                   ("student.lorad.safetensors",)),)),
    # -- docs/distill.md ---------------------------------------------------------------------
    # (the workspace's outputs/distill already holds this run, made for the commands that need a student)
    "wadi distill --config run.yaml": Run("--output.dir outputs/distill-again", needs=("run.yaml",),
                                          makes=("outputs/distill-again/student.lorad.safetensors",)),
    "wadi distill --config run.yaml --train.max_steps 200 --adapter.kind lora": Run(
        f"{DISTILL_SMALL} --output.dir outputs/lora200", needs=("run.yaml",),
        makes=("outputs/lora200/student.lora.safetensors",)),
    "wadi distill --config run.yaml --resume latest": Run(
        "--train.max_steps 3", needs=("student",), makes=("outputs/distill/checkpoints/step-00000003",)),
    "wadi distill --model.base ./sd15 --data.prompts captions.txt --save-config run.yaml": Run(
        f"{DISTILL_SMALL} --output.dir outputs/distill", makes=("run.yaml",)),
    "torchrun --nproc_per_node 2 -m wadi_lorad distill --config run.yaml": Covered(
        "tests/test_distill_processes.py::test_two_cpu_processes_equal_one_at_the_same_global_batch "
        "(2 CPU processes via torch.distributed.run = torchrun)"),
    "OMP_NUM_THREADS=1 python bench/tinyworld_ablation.py --out outputs/ablation --json "
    "docs/perf/tinyworld_ablation.json --figure docs/img/tinyworld_norm_direction.png": Options(
        "python {root}/bench/tinyworld_ablation.py --help", "trains several students: hours on a CPU"),
    "python bench/distill_step_time.py --student-rank 64 --fake-rank 32 --batch 16 --steps 20 --threads 1": Options(
        "python {root}/bench/distill_step_time.py --help", "a timing on SD1.5-size layers: minutes"),
    "python bench/distill_step_time.py --kinds lorad --targets paper-student,all-linear-conv --student-rank 64 "
    "--fake-rank 32 --batch 16 --steps 20 --threads 2 --set vsd.timestep=800 --set optim.conv_lr_scale=3": Options(
        "python {root}/bench/distill_step_time.py --help",
        "a timing: minutes (tests/test_bench_step_time.py runs the same options at toy size)"),
    # -- docs/performance.md -----------------------------------------------------------------
    "python bench/adapter_cost.py --threads 1 --repeats 5 --warmup 1 --flops --json adapter_cost_cpu.json": Options(
        "python {root}/bench/adapter_cost.py --help", "a timing on full-size layers: minutes"),
    "python bench/vsd_step.py --models sd15-lite --latent 16 --threads 1 --repeats 5 --json vsd_step_cpu.json":
        Options("python {root}/bench/vsd_step.py --help", "a timing: minutes"),
    "python bench/vsd_step.py --models tiny --batch 16 --student-rank 32 --fake-rank 8 --threads 1 --repeats 10":
        Options("python {root}/bench/vsd_step.py --help", "a timing: minutes"),
    "python bench/apply_cost.py --threads 1 --repeats 5 --file --json apply_cost_cpu.json": Options(
        "python {root}/bench/apply_cost.py --help", "a timing on full-size layers: minutes"),
    "COMFYUI_DIR=/work/comfyui /work/comfyui-venv/bin/python bench/apply_cost.py --no-mem": Options(
        "python {root}/bench/apply_cost.py --help", "a timing inside a ComfyUI install"),
    "python bench/onestep_cost.py --models sd15-lite --threads 1 --repeats 3 --json onestep_cpu.json": Options(
        "python {root}/bench/onestep_cost.py --help", "a timing: minutes"),
    # -- docs/quality-study.md ---------------------------------------------------------------
    "OMP_NUM_THREADS=1 python bench/tinyworld_study.py --name cosine-s0 --steps 2000 --eval-every 250 --set "
    "optim.lr_scheduler=cosine": Options(
        "python {root}/bench/tinyworld_study.py --help", "trains a student: half an hour or more on a CPU"),
    "python bench/tinyworld_diagnose.py outputs/study/fakelr3e-2-s0/student_params_ema.safetensors "
    "outputs/study/qreg-s0/student_params_ema.safetensors --json docs/perf/tinyworld_diagnose.json": Options(
        "python {root}/bench/tinyworld_diagnose.py --help", "needs the study's trained students (outputs/study)"),
    "OMP_NUM_THREADS=1 python bench/tinyworld_study.py --name dq-s0 --config configs/tinyworld-quality.yaml --seed 0 "
    "--steps 300 --eval-every 150 --set vsd.regression_pairs=256": Options(
        "python {root}/bench/tinyworld_study.py --help", "trains a demo-length candidate: 20 minutes or more on a CPU"),
    "OMP_NUM_THREADS=1 python bench/tinyworld_study.py --name dc400-s0 --config configs/tinyworld-quality-conv.yaml "
    "--seed 0 --steps 400 --eval-every 200": Options(
        "python {root}/bench/tinyworld_study.py --help", "trains a demo-length candidate: 20 minutes or more on a CPU"),
    "wadi distill --config configs/tinyworld-regression.yaml": Run(
        f"{DISTILL_SMALL} --vsd.regression_pairs 4 --vsd.regression_steps 2 --output.dir outputs/quality",
        makes=("outputs/quality/student.lorad.safetensors",)),
    "wadi distill --config configs/tinyworld-quality.yaml": Run(
        f"{DISTILL_SMALL} --vsd.regression_pairs 4 --vsd.regression_steps 2 --output.dir outputs/quality-recipe",
        makes=("outputs/quality-recipe/student.lorad.safetensors",)),
    "wadi distill --config configs/tinyworld-quality-conv.yaml": Run(
        f"{DISTILL_SMALL} --output.dir outputs/quality-conv",
        makes=("outputs/quality-conv/student.lorad.safetensors",)),
    "wadi distill --config configs/tinyworld-quality-linear.yaml": Run(
        f"{DISTILL_SMALL} --output.dir outputs/quality-linear",
        makes=("outputs/quality-linear/student.lorad.safetensors",)),
    "OMP_NUM_THREADS=1 python bench/tinyworld_study.py --name T800-s2 --config configs/tinyworld-quality-linear.yaml "
    "--seed 2 --steps 1200 --eval-every 300": Options(
        "python {root}/bench/tinyworld_study.py --help", "trains the quality recipe: about 25 minutes on this CPU"),
    "OMP_NUM_THREADS=1 python bench/tinyworld_study.py --name quality-s0 --config configs/tinyworld-quality-linear.yaml "
    "--seed 0 --steps 1200 --eval-every 1200 --export": Options(
        "python {root}/bench/tinyworld_study.py --help", "trains and exports the shipped quality student"),
    "python bench/tinyworld_study.py --plot docs/img/tinyworld_curves_round4.png --only "
    "\"^(ctrl|T[0-9]+|fwu)\"": Options(
        "python {root}/bench/tinyworld_study.py --help", "plots the study's runs (outputs/study)"),
    "OMP_NUM_THREADS=1 python bench/tinyworld_study.py --name reg002-s1 --config configs/tinyworld-quality-linear.yaml "
    "--seed 1 --steps 1200 --eval-every 300 --set vsd.regression_weight=0.02": Options(
        "python {root}/bench/tinyworld_study.py --help", "trains a student: 30-50 minutes on this CPU"),
    "python bench/tinyworld_study.py --plot docs/img/tinyworld_curves_round5.png --only "
    "\"^(T800-s|reg002|g4reg|q-(lora|dora|full)|demo)\" --json docs/perf/tinyworld_study_round5.json": Options(
        "python {root}/bench/tinyworld_study.py --help",
        "plots the study's runs (outputs/study); tests/test_bench_study_plot.py runs --plot --only --json on made-up runs"),
    "OMP_NUM_THREADS=1 python bench/tinyworld_study.py --name q-lora3e-4-s0 --config configs/tinyworld-quality-linear.yaml "
    "--steps 1200 --eval-every 300 --set adapter.kind=lora --set optim.student_lr=3e-4": Options(
        "python {root}/bench/tinyworld_study.py --help", "trains a student: 30-50 minutes on this CPU"),
    "OMP_NUM_THREADS=1 python bench/tinyworld_study.py --name demo-s1 --seed 1 --steps 600 --eval-every 600 --set "
    "vsd.timestep=800 --set optim.fake_lr=3e-2 --set optim.lr_scheduler=cosine": Options(
        "python {root}/bench/tinyworld_study.py --help", "trains the demo's student: 10-35 minutes on this CPU"),
    # round 6
    "OMP_NUM_THREADS=1 python bench/tinyworld_study.py --name q-full1e-4-s1 --config "
    "configs/tinyworld-quality-linear.yaml --seed 1 --steps 1200 --eval-every 300 --set adapter.kind=full "
    "--set optim.student_lr=1e-4": Options(
        "python {root}/bench/tinyworld_study.py --help", "trains a student: 30-50 minutes on this CPU"),
    "OMP_NUM_THREADS=1 python bench/tinyworld_fullft_parts.py outputs/study/q-full1e-4-s0/student_params_ema.safetensors "
    "--lorad-students outputs/study/T800-s0/student_params_ema.safetensors "
    "outputs/study/q-convall-c03-s0/student_params_ema.safetensors --json docs/perf/tinyworld_fullft_parts.json": Options(
        "python {root}/bench/tinyworld_fullft_parts.py --help",
        "needs the study's trained students (outputs/study); tests/test_bench_fullft_parts.py checks its hybrids"),
    "OMP_NUM_THREADS=1 python bench/tinyworld_study.py --name q-convall-c3-s1 --config "
    "configs/tinyworld-quality-linear.yaml --seed 1 --steps 1200 --eval-every 300 --set "
    "adapter.student_targets=all-linear-conv --set optim.conv_lr_scale=3.0": Options(
        "python {root}/bench/tinyworld_study.py --help", "trains a student: 30-50 minutes on this CPU"),
    "OMP_NUM_THREADS=1 python bench/tinyworld_study.py --name quality-conv-s0 --config "
    "configs/tinyworld-quality-conv.yaml "
    "--seed 0 --steps 1200 --eval-every 1200 --export": Options(
        "python {root}/bench/tinyworld_study.py --help", "trains and exports the shipped quality student"),
    "OMP_NUM_THREADS=1 python bench/tinyworld_study.py --name q-c3reg005-s0 --config "
    "configs/tinyworld-quality-conv.yaml "
    "--steps 1200 --eval-every 300 --set vsd.regression_weight=0.05": Options(
        "python {root}/bench/tinyworld_study.py --help", "trains a student: 30-50 minutes on this CPU"),
    "python bench/tinyworld_study.py --plot docs/img/tinyworld_curves_round6.png --only "
    "\"^(T800-s|q-full1e-4|q-convall-c(1|3)-|q-c3reg(005|01)-)\" --json docs/perf/tinyworld_study_round6.json": Options(
        "python {root}/bench/tinyworld_study.py --help",
        "plots the study's runs (outputs/study); tests/test_bench_study_plot.py runs --plot --only --json on made-up runs"),
    "python bench/tinyworld_diagnose.py outputs/study/T800-s0/student_params_ema.safetensors --timestep 800 "
    "--json docs/perf/tinyworld_diagnose_t800.json": Options(
        "python {root}/bench/tinyworld_diagnose.py --help", "needs the study's trained students (outputs/study)"),
    # round 7
    "OMP_NUM_THREADS=1 python bench/tinyworld_study.py --name q-c3reg001-s1 --config "
    "configs/tinyworld-quality-conv.yaml --seed 1 --steps 1200 --eval-every 300 --set vsd.regression_weight=0.01": Options(
        "python {root}/bench/tinyworld_study.py --help", "trains a student: 40-65 minutes on this CPU"),
    "python bench/tinyworld_study.py --plot docs/img/tinyworld_curves_round7.png --only "
    "\"^(q-convall-c3-|q-c3reg)\" --json docs/perf/tinyworld_study_round7.json": Options(
        "python {root}/bench/tinyworld_study.py --help",
        "plots the study's runs (outputs/study); tests/test_bench_study_plot.py runs --plot --only --json on made-up runs"),
    "python bench/tinyworld_study.py --plot docs/img/tinyworld_curves_round8.png --only "
    "\"^(demo-s|dq-|dqc-|dc400-|q-c3reg001-|qr-)\" --json docs/perf/tinyworld_study_round8.json": Options(
        "python {root}/bench/tinyworld_study.py --help",
        "plots the study's runs (outputs/study); tests/test_bench_study_plot.py runs --plot --only --json on made-up runs"),
    "OMP_NUM_THREADS=2 python bench/tinyworld_study.py --name demo-t2-s1 --seed 1 --steps 600 --eval-every 600 "
    "--threads 2 --set vsd.timestep=800 --set optim.fake_lr=3e-2 --set optim.lr_scheduler=cosine": Options(
        "python {root}/bench/tinyworld_study.py --help", "trains the demo's recipe: 10 minutes or more on a CPU"),
    "OMP_NUM_THREADS=1 python bench/tinyworld_study.py --name qr-lora3e-4-s0 --config configs/tinyworld-quality.yaml "
    "--seed 0 --steps 1200 --eval-every 300 --set adapter.kind=lora --set optim.student_lr=3e-4": Options(
        "python {root}/bench/tinyworld_study.py --help", "trains a student on the quality recipe: an hour or more on a CPU"),
    "OMP_NUM_THREADS=1 python bench/tinyworld_study.py --name quality-reg-s0 --config configs/tinyworld-quality.yaml "
    "--seed 0 --steps 1200 --eval-every 1200 --export": Options(
        "python {root}/bench/tinyworld_study.py --help", "trains and exports the shipped quality student"),
    # the shipped quality student through every command that reads it (the real file, small eval)
    "wadi sample --base assets/tinyworld/teacher --lorad assets/tinyworld/students/wadi-quality.lorad.safetensors "
    "--prompt \"a red circle on the left\" --out outputs/quality.png": Run(makes=("outputs/quality.png",)),
    "lorad merge assets/tinyworld/teacher assets/tinyworld/students/wadi-quality.lorad.safetensors "
    "outputs/quality-merged": Run(makes=("outputs/quality-merged/diffusion_pytorch_model.safetensors",)),
    "wadi eval --mode onestep --lorad assets/tinyworld/students/wadi-quality.lorad.safetensors "
    "--out outputs/quality-eval.json": Run("--n 8 --seeds 0", makes=("outputs/quality-eval.json",)),
    "python bench/tinyworld_study.py --plot docs/img/tinyworld_curves.png --json docs/perf/tinyworld_study.json":
        Options("python {root}/bench/tinyworld_study.py --help", "plots the study's runs (outputs/study)"),
    "OMP_NUM_THREADS=1 python bench/trainer_memory.py --models sd15 --latent 64 --dtypes fp32 bf16 --checkpointing "
    "off on --candidates ours --threads 1 --json docs/perf/trainer_memory_cpu.json": Options(
        "python {root}/bench/trainer_memory.py --help",
        "full-size SD1.5 training steps: minutes each (tests/test_bench_trainer_memory.py runs one at toy size)"),
    "OMP_NUM_THREADS=1 python bench/trainer_memory.py --threads 1 --counted sd15 sdxl --cases "
    "sd15:official:bf16:nockpt:b1:l64 sd15:ours:bf16:nockpt:b2:l64 sd15:official-shared:fp32:nockpt:b1:l64 --json "
    "docs/perf/trainer_memory_cpu.json": Options(
        "python {root}/bench/trainer_memory.py --help", "full-size SD1.5 training steps: minutes each"),
    "python bench/trainer_memory.py --report docs/perf/trainer_memory_cpu.json": Covered(
        "tests/test_bench_trainer_memory.py::test_report_of_the_committed_json (run as written, from the checkout)"),
    **{f"python bench/comfy_fullsize.py --arch {arch}{extra} --json docs/perf/comfy_fullsize_cpu.json": Covered(
        "tests/test_comfyui_fullsize.py (slow, live ComfyUI: the same functions on full-size SD1.5); the bench "
        "itself needs a real ComfyUI, minutes per server and up to 14 GB (SDXL)",
        check=f"python {{root}}/bench/comfy_fullsize.py --arch {arch}{extra} --dry-run --json x.json "
              f"| grep -q '\"layers\": {n}'")
       for arch, extra, n in (("sd15", "", 182), ("sd21", "", 214), ("sdxl", " --repeats 2", 739))},
    "bench/gpu/run.sh": Skip("needs a GPU (the lent H100/H200 run)"),
    "PYTHON=.venv/bin/python bench/gpu/run.sh --cpu-smoke": Options(
        "bash -n {root}/bench/gpu/run.sh && grep -e --cpu-smoke {root}/bench/gpu/run.sh",
        "every GPU benchmark at toy sizes on the CPU (minutes); its python scripts are checked above"),
    # -- docs/personalization.md -------------------------------------------------------------
    "wadi personalize --model.base ./sd15 --data.images my_dog --data.instance_prompt \"a photo of sks dog\" "
    "--data.class_prompt \"a photo of a dog\" --prior.enabled true": Run(
        f"{FT_SMALL} --output.dir outputs/personalize-prior",
        makes=("outputs/personalize-prior/personal.lorad.safetensors",)),
    "wadi personalize --model.base ./sd15 --model.student student.lorad.safetensors --data.images my_dog "
    "--data.instance_prompt \"a photo of sks dog\"": Run(
        f"{FT_SMALL} --output.dir outputs/personalize-student", needs=("student.lorad.safetensors",),
        makes=("outputs/personalize-student/personal.lorad.safetensors",)),
    "wadi relation --model.base ./sd15 --data.images exemplars --token.placeholder \"<R>\" --output.name painted_on":
        Run(RELATION_SMALL, makes=("outputs/relation/painted_on.safetensors",)),
    "wadi sample --base ./sd15 --lorad student.lorad.safetensors --adapter personal.lorad.safetensors:0.8 "
    "--embedding outputs/relation/painted_on.safetensors --prompt \"a sks dog embedding:painted_on a wall\"": Run(
        "--out outputs/personal.png", needs=("student.lorad.safetensors", "personal.lorad.safetensors", "relation"),
        makes=("outputs/personal.png",)),
    "wadi demo --out outputs/demo": Covered("tests/test_distill_demo.py (slow: the real `wadi demo`, ~5 min)"),
    "OMP_NUM_THREADS=1 python bench/personalize_transfer.py --student outputs/demo/student.lorad.safetensors --out "
    "outputs/ptransfer --json docs/perf/personalize_transfer.json --figure docs/img/personalize_transfer.png":
        Options("python {root}/bench/personalize_transfer.py --help", "fine-tunes several adapters: tens of minutes"),
    "OMP_NUM_THREADS=1 python bench/relation_inversion.py --student outputs/demo/student.lorad.safetensors --out "
    "outputs/relation_bench --json docs/perf/relation_inversion.json --figure docs/img/relation_inversion.png":
        Options("python {root}/bench/relation_inversion.py --help", "trains relation tokens: tens of minutes"),
    # -- docs/trainer-tab.md -----------------------------------------------------------------
    "python -m wadi_lorad.trainer.tab --port 7861 --root ~/wadi --root /data/models": Run(
        "--port {port} --no-browser", server=True, replace=(("/data/models", "./models"),)),
}
# /data/models: a folder of the reader's machine; here a folder of the workspace stands in.


def doc_commands() -> list[tuple[str, str]]:
    """``(document, command)`` for every command line of the docs' shell and plain code blocks."""
    out = []
    for doc in DOCS:
        text = doc.read_text(encoding="utf-8")
        for m in re.finditer(r"^```(\w*)\n(.*?)^```", text, re.S | re.M):
            if m.group(1) not in ("", "bash", "sh", "shell", "console"):
                continue
            block: list[str] = []
            for line in m.group(2).replace("\\\n", " ").splitlines():
                words = _strip_comment(line).split()
                first = next((w for w in words if not re.match(r"^[A-Z_]+=", w)), "")
                if first in COMMAND_WORDS or (words and re.match(r"^[A-Z_]+=", words[0]) and first):
                    block.append(" ".join(words))
                elif block and words and line[:1].isspace() and not m.group(1):
                    block[-1] += " " + " ".join(words)  # a synopsis wrapped onto an indented line
            out += [(doc.relative_to(ROOT).as_posix(), c) for c in block]
    return out


def _strip_comment(line: str) -> str:
    """The line without a trailing ``# comment`` (a ``#`` inside quotes stays)."""
    quote = None
    for i, ch in enumerate(line):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i]
    return line


def test_every_documented_command_has_a_plan():
    found = {c for _, c in doc_commands()}  # one entry serves a command shown twice
    missing = sorted(found - PLAN.keys())
    assert not missing, "documented commands that no test runs and the skip-list does not name:\n" + "\n".join(missing)
    stale = sorted(PLAN.keys() - found)
    assert not stale, "PLAN entries for commands the docs no longer show:\n" + "\n".join(stale)
    assert len(found) >= 40  # the extraction itself works (a broken regex would find nothing)


# -- the workspace ---------------------------------------------------------------------------------


def _shim(path: Path, body: str) -> None:
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(0o755)


class Workspace:
    def __init__(self, root: Path) -> None:
        self.dir = root
        bin_dir, site = root / ".bin", root / ".site"
        bin_dir.mkdir()
        site.mkdir()
        (site / "wadi_lorad").symlink_to(ROOT)  # ``python -m wadi_lorad`` imports this checkout
        py = shlex.quote(sys.executable)
        _shim(bin_dir / "python", f'exec {py} "$@"')
        _shim(bin_dir / "wadi", f'exec {py} -m wadi_lorad "$@"')
        _shim(bin_dir / "lorad", f'exec {py} -m wadi_lorad.lorad.cli "$@"')
        self.env = {**os.environ, "PATH": f"{bin_dir}:{Path(sys.executable).parent}:{os.environ.get('PATH', '')}",
                    "PYTHONPATH": str(site), "HOME": str(root / "home"), "OMP_NUM_THREADS": "1",
                    "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                    "DIFFUSERS_OFFLINE": "1", "ACCELERATE_USE_CPU": "1"}
        self.env.pop("WADI_STOP_FILE", None)  # a stop file of an enclosing job must not stop these runs
        (root / "home").mkdir()
        (root / "models").mkdir()
        teacher = ROOT / "assets" / "tinyworld" / "teacher"
        for name in ("sd15", "stable-diffusion-v1-5"):
            (root / name).symlink_to(teacher)
        for name in ("configs", "assets"):  # commands documented "from the pack's root" run as written
            (root / name).symlink_to(ROOT / name)
        from wadi_lorad.trainer.tinyworld import domain

        (root / "captions.txt").write_text("\n".join(domain.sample_captions(16, 0)) + "\n")
        for folder, seed in (("my_dog", 0), ("exemplars", 1)):
            self._images(root / folder, seed)

    @staticmethod
    def _images(folder: Path, seed: int) -> None:
        from PIL import Image
        from wadi_lorad.trainer.tinyworld import domain

        folder.mkdir()
        for i, caption in enumerate(domain.sample_captions(3, seed)):
            pixels = (domain.render(caption, seed=i, size=32).clip(0, 1) * 255).round().astype("uint8")
            Image.fromarray(pixels).save(folder / f"{i}.png")
            # Captions name the relation with the placeholder token (what `wadi relation` requires).
            (folder / f"{i}.txt").write_text((caption if folder.name == "my_dog" else "a shape <R> a shape") + "\n")

    def sh(self, cmd: str, check: bool = True) -> subprocess.CompletedProcess:
        r = subprocess.run(["bash", "-c", cmd], cwd=self.dir, env=self.env, capture_output=True, text=True,
                           timeout=TIMEOUT_S)
        if check:
            assert r.returncode == 0, f"`{cmd}` exited {r.returncode}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
        return r

    def need(self, what: str) -> None:
        """Steps that documented commands assume were done before (each made once)."""
        d = self.dir
        if what == "run.yaml" and not (d / "run.yaml").exists():
            self.run_plan("wadi distill --model.base ./sd15 --data.prompts captions.txt --save-config run.yaml")
        elif what == "student" and not (d / "outputs/distill/student.lorad.safetensors").exists():
            self.need("run.yaml")
            self.sh("wadi distill --config run.yaml --output.checkpoint_every 1")
        elif what == "student.lorad.safetensors" and not (d / what).exists():
            self.need("student")
            shutil.copy(d / "outputs/distill/student.lorad.safetensors", d / what)
        elif what == "personal.lorad.safetensors" and not (d / what).exists():
            self.sh(f"wadi personalize --model.base ./sd15 --data.images my_dog --data.instance_prompt 'a sks dog' "
                    f"{FT_SMALL} --output.dir outputs/personal-need")
            shutil.copy(d / "outputs/personal-need/personal.lorad.safetensors", d / what)
        elif what == "relation" and not (d / "outputs/relation/painted_on.safetensors").exists():
            self.sh(f"wadi relation --model.base ./sd15 --data.images exemplars --output.name painted_on "
                    f"{RELATION_SMALL}")
        elif what in ("dmd2", "rotated"):
            self._merged_unet(what)

    def _merged_unet(self, what: str) -> None:
        """A base UNet with weights moved, in one file: what a distilled checkpoint looks like to analyze."""
        name = "dmd2_sd15_unet.safetensors" if what == "dmd2" else "rotated_unet-sdv1-5.safetensors"
        if (self.dir / name).exists():
            return
        import torch
        from safetensors.torch import load_file, save_file

        unet = self.dir / "sd15" / "unet"
        sd = {}
        for f in sorted(unet.glob("*.safetensors")):
            sd.update(load_file(str(f)))
        g = torch.Generator().manual_seed(0)
        if what == "dmd2":
            moved = {k: (v.float() + 0.01 * torch.randn(v.shape, generator=g)).to(v.dtype)
                     if v.ndim >= 2 else v for k, v in sd.items()}
        else:  # rotate each row's first column pair: a change LoRaD extraction recovers
            moved = {}
            for k, v in sd.items():
                if v.ndim == 2 and v.shape[1] >= 2 and k.endswith(".weight"):
                    w = v.float().clone()
                    c, s = torch.cos(torch.tensor(0.3)), torch.sin(torch.tensor(0.3))
                    a, b = w[:, 0].clone(), w[:, 1].clone()
                    w[:, 0], w[:, 1] = c * a - s * b, s * a + c * b
                    moved[k] = w.to(v.dtype)
                else:
                    moved[k] = v
        save_file({k: v.contiguous() for k, v in moved.items()}, str(self.dir / name))

    def run_plan(self, cmd: str) -> None:
        plan = PLAN[cmd]
        assert isinstance(plan, Run)
        for n in plan.needs:
            self.need(n)
        line = cmd
        for a, b in plan.replace:
            line = line.replace(a, b)
        port = _free_port()
        full = f"{line} {plan.extra}".format(port=port)
        if plan.server:
            self._serve(full, port)
        else:
            self.sh(full)
        for m in plan.makes:
            assert (self.dir / m).exists(), f"`{full}` did not write {m}"

    def _serve(self, cmd: str, port: int) -> None:
        proc = subprocess.Popen(["bash", "-c", f"exec {cmd}"], cwd=self.dir, env=self.env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, start_new_session=True)
        try:
            deadline = time.monotonic() + 300  # a hang guard: importing Gradio on a busy CPU
            while time.monotonic() < deadline:
                assert proc.poll() is None, f"`{cmd}` exited {proc.returncode}: {proc.stdout.read()[-3000:]}"
                try:
                    with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                        break
                except OSError:
                    time.sleep(0.5)
            else:
                pytest.fail(f"`{cmd}` never answered on port {port}")
            import urllib.request

            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=60) as resp:
                assert resp.status == 200
        finally:
            os.killpg(proc.pid, 15)
            proc.wait(timeout=60)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Workspace:
    return Workspace(tmp_path_factory.mktemp("docs"))


def _cases(kind):
    seen, out = set(), []
    for doc, cmd in doc_commands():
        if cmd in seen or not isinstance(PLAN.get(cmd), kind):
            continue
        seen.add(cmd)
        out.append(pytest.param(cmd, id=f"{doc}:{cmd[:60]}"))
    return out


@pytest.mark.parametrize("cmd", _cases(Run))
def test_documented_command_runs(cmd, workspace):
    workspace.run_plan(cmd)


@pytest.mark.parametrize("cmd", _cases(Options))
def test_documented_options_exist(cmd, workspace):
    plan = PLAN[cmd]
    helptext = workspace.sh(plan.help.format(root=shlex.quote(str(ROOT)))).stdout
    for opt in re.findall(r"(?<![\w-])(--[a-z][\w-]*)", cmd):
        assert opt in helptext, f"{cmd!r} shows {opt}, which `{plan.help}` does not accept"


def _examples():
    out = []
    for plan in PLAN.values():
        for cmd, needs in getattr(plan, "examples", ()):
            out.append(pytest.param(cmd, needs, id=cmd[:70]))
    return out


@pytest.mark.parametrize("cmd, needs", _examples())
def test_synopsis_example_runs(cmd, needs, workspace):
    for n in needs:
        workspace.need(n)
    workspace.sh(cmd)


@pytest.mark.parametrize("cmd", [c for c in PLAN if isinstance(PLAN[c], Covered) and PLAN[c].check])
def test_covered_command_target_exists(cmd, workspace):
    workspace.sh(PLAN[cmd].check.format(root=shlex.quote(str(ROOT))))


def test_wadi_eval_writes_its_results(workspace):
    """``wadi eval --out results.json`` (its own usage text) crashed on an import left by a refactor."""
    import json

    workspace.sh("wadi eval --mode noise --n 8 --seeds 0 --out results.json")
    res = json.loads((workspace.dir / "results.json").read_text())
    assert res["n_prompts"] == 8 and "noise" in res["rows"]


def test_docs_and_code_are_self_contained():
    """Nothing shipped cites the team's private notes (users never receive them)."""
    names = ("wadi-" + "facts", "comfyui-" + "facts", "../" + "shared")  # split: this file is scanned too
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    hits = []
    for rel in files:
        path = ROOT / rel
        if path.suffix not in (".py", ".md", ".js", ".sh", ".yaml", ".toml", ".txt") or not path.is_file():
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        hits += [f"{rel}: {n}" for n in names if n in text]
    assert hits == []
