"""What each documented command gets in tests/test_docs_commands.py: the plan, kept apart from the runner.

One entry per command line of README.md and docs/*.md (the key is the line as written): run it here,
check its options against ``--help``, point to the test that runs it, or skip it for a stated reason.
Adding a command to the docs means adding its entry here.
"""

from __future__ import annotations

from dataclasses import dataclass

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


STUDY_HELP = "python {root}/bench/tinyworld_study.py --help"
PLOT_WHY = ("plots the study's runs (outputs/study); tests/test_bench_study_plot.py runs --plot --only --json "
            "on made-up runs")


# The demo with another training seed or thread count (quality-study.md, round 16).
DEMO_SEED = Options("wadi demo --help", "the real demo: 8 minutes on this CPU; tests/test_distill_demo.py runs it (slow)")


def study(why: str) -> Options:
    """A documented `bench/tinyworld_study.py` run: too long for the tests, its options checked against --help."""
    return Options(STUDY_HELP, why)


def quality_variant(name: str, sets: str) -> str:
    """A study run of the quality recipe with one change (``sets``), seed 0: its text exactly as the docs show it."""
    return (f"OMP_NUM_THREADS=1 python bench/tinyworld_study.py --name {name}-s0 --config configs/tinyworld-quality.yaml "
            f"--seed 0 --steps 1200 --eval-every 300 --set adapter.kind=lorad --set optim.student_lr=0.003 {sets}")


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
    "python bench/distill_step_time.py --kinds lorad,lora,dora,full --targets all-linear-conv --student-rank 64 "
    "--fake-rank 32 --batch 16 --steps 20 --threads 2 --set vsd.timestep=800 --set optim.conv_lr_scale=3 "
    "--set vsd.regression_weight=0.01 --set vsd.regression_pairs=32 --set vsd.regression_steps=2": Options(
        "python {root}/bench/distill_step_time.py --help",
        "a timing: minutes (tests/test_bench_step_time.py runs --targets and --set at toy size)"),
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
    "optim.lr_scheduler=cosine": study("trains a student: half an hour or more on a CPU"),
    "python bench/tinyworld_diagnose.py outputs/study/fakelr3e-2-s0/student_params_ema.safetensors "
    "outputs/study/qreg-s0/student_params_ema.safetensors --json docs/perf/tinyworld_diagnose.json": Options(
        "python {root}/bench/tinyworld_diagnose.py --help", "needs the study's trained students (outputs/study)"),
    "OMP_NUM_THREADS=1 python bench/tinyworld_study.py --name dq-s0 --config configs/tinyworld-quality.yaml --seed 0 "
    "--steps 300 --eval-every 150 --set vsd.regression_pairs=256": study("trains a demo-length candidate: 20 minutes or more on a CPU"),
    "OMP_NUM_THREADS=1 python bench/tinyworld_study.py --name dc400-s0 --config configs/tinyworld-quality-conv.yaml "
    "--seed 0 --steps 400 --eval-every 200": study("trains a demo-length candidate: 20 minutes or more on a CPU"),
    "wadi distill --config configs/tinyworld-regression.yaml": Run(
        f"{DISTILL_SMALL} --vsd.regression_pairs 4 --vsd.regression_steps 2 --output.dir outputs/quality",
        makes=("outputs/quality/student.lorad.safetensors",)),
    # Into the config's own folder, as documented: the need "tinyworld-quality" (the eval below) runs this
    # same entry, so the suite trains it once. --output.force: whichever of the two comes second starts
    # over instead of stopping at the first one's run.
    "wadi distill --config configs/tinyworld-quality.yaml": Run(
        f"{DISTILL_SMALL} --vsd.regression_pairs 4 --vsd.regression_steps 2 --output.force true",
        makes=("outputs/tinyworld-quality/student.lorad.safetensors",)),
    "wadi distill --config configs/tinyworld-quality-conv.yaml": Run(
        f"{DISTILL_SMALL} --output.dir outputs/quality-conv",
        makes=("outputs/quality-conv/student.lorad.safetensors",)),
    "wadi distill --config configs/tinyworld-quality-linear.yaml": Run(
        f"{DISTILL_SMALL} --output.dir outputs/quality-linear",
        makes=("outputs/quality-linear/student.lorad.safetensors",)),
    "OMP_NUM_THREADS=1 python bench/tinyworld_study.py --name T800-s2 --config configs/tinyworld-quality-linear.yaml "
    "--seed 2 --steps 1200 --eval-every 300": study("trains the quality recipe: about 25 minutes on this CPU"),
    "OMP_NUM_THREADS=1 python bench/tinyworld_study.py --name quality-s0 --config configs/tinyworld-quality-linear.yaml "
    "--seed 0 --steps 1200 --eval-every 1200 --export": study("trains and exports the shipped quality student"),
    "python bench/tinyworld_study.py --plot docs/img/tinyworld_curves_round4.png --only "
    "\"^(ctrl|T[0-9]+|fwu)\"": study("plots the study's runs (outputs/study)"),
    "OMP_NUM_THREADS=1 python bench/tinyworld_study.py --name reg002-s1 --config configs/tinyworld-quality-linear.yaml "
    "--seed 1 --steps 1200 --eval-every 300 --set vsd.regression_weight=0.02": study("trains a student: 30-50 minutes on this CPU"),
    "python bench/tinyworld_study.py --plot docs/img/tinyworld_curves_round5.png --only "
    "\"^(T800-s|reg002|g4reg|q-(lora|dora|full)|demo)\" --json docs/perf/tinyworld_study_round5.json": study(PLOT_WHY),
    "OMP_NUM_THREADS=1 python bench/tinyworld_study.py --name q-lora3e-4-s0 --config configs/tinyworld-quality-linear.yaml "
    "--steps 1200 --eval-every 300 --set adapter.kind=lora --set optim.student_lr=3e-4": study("trains a student: 30-50 minutes on this CPU"),
    "OMP_NUM_THREADS=1 python bench/tinyworld_study.py --name demo-s1 --seed 1 --steps 600 --eval-every 600 --set "
    "vsd.timestep=800 --set optim.fake_lr=3e-2 --set optim.lr_scheduler=cosine": study("trains the demo's student: 10-35 minutes on this CPU"),
    # round 6
    "OMP_NUM_THREADS=1 python bench/tinyworld_study.py --name q-full1e-4-s1 --config "
    "configs/tinyworld-quality-linear.yaml --seed 1 --steps 1200 --eval-every 300 --set adapter.kind=full "
    "--set optim.student_lr=1e-4": study("trains a student: 30-50 minutes on this CPU"),
    "OMP_NUM_THREADS=1 python bench/tinyworld_fullft_parts.py outputs/study/q-full1e-4-s0/student_params_ema.safetensors "
    "--lorad-students outputs/study/T800-s0/student_params_ema.safetensors "
    "outputs/study/q-convall-c03-s0/student_params_ema.safetensors --json docs/perf/tinyworld_fullft_parts.json": Options(
        "python {root}/bench/tinyworld_fullft_parts.py --help",
        "needs the study's trained students (outputs/study); tests/test_bench_fullft_parts.py checks its hybrids"),
    "OMP_NUM_THREADS=1 python bench/tinyworld_study.py --name q-convall-c3-s1 --config "
    "configs/tinyworld-quality-linear.yaml --seed 1 --steps 1200 --eval-every 300 --set "
    "adapter.student_targets=all-linear-conv --set optim.conv_lr_scale=3.0": study("trains a student: 30-50 minutes on this CPU"),
    "OMP_NUM_THREADS=1 python bench/tinyworld_study.py --name quality-conv-s0 --config "
    "configs/tinyworld-quality-conv.yaml "
    "--seed 0 --steps 1200 --eval-every 1200 --export": study("trains and exports the shipped quality student"),
    "OMP_NUM_THREADS=1 python bench/tinyworld_study.py --name q-c3reg005-s0 --config "
    "configs/tinyworld-quality-conv.yaml "
    "--steps 1200 --eval-every 300 --set vsd.regression_weight=0.05": study("trains a student: 30-50 minutes on this CPU"),
    "python bench/tinyworld_study.py --plot docs/img/tinyworld_curves_round6.png --only "
    "\"^(T800-s|q-full1e-4|q-convall-c(1|3)-|q-c3reg(005|01)-)\" --json docs/perf/tinyworld_study_round6.json": study(PLOT_WHY),
    "python bench/tinyworld_diagnose.py outputs/study/T800-s0/student_params_ema.safetensors --timestep 800 "
    "--json docs/perf/tinyworld_diagnose_t800.json": Options(
        "python {root}/bench/tinyworld_diagnose.py --help", "needs the study's trained students (outputs/study)"),
    # round 7
    "OMP_NUM_THREADS=1 python bench/tinyworld_study.py --name q-c3reg001-s1 --config "
    "configs/tinyworld-quality-conv.yaml --seed 1 --steps 1200 --eval-every 300 --set vsd.regression_weight=0.01": study("trains a student: 40-65 minutes on this CPU"),
    "python bench/tinyworld_study.py --plot docs/img/tinyworld_curves_round7.png --only "
    "\"^(q-convall-c3-|q-c3reg)\" --json docs/perf/tinyworld_study_round7.json": study(PLOT_WHY),
    "python bench/tinyworld_study.py --plot docs/img/tinyworld_curves_round8.png --only "
    "\"^(demo-s|dq-|dqc-|dc400-|q-c3reg001-|qr-)\" --json docs/perf/tinyworld_study_round8.json": study(PLOT_WHY),
    "OMP_NUM_THREADS=2 python bench/tinyworld_study.py --name demo-t2-s1 --seed 1 --steps 600 --eval-every 600 "
    "--threads 2 --set vsd.timestep=800 --set optim.fake_lr=3e-2 --set optim.lr_scheduler=cosine": study("trains the demo's recipe: 10 minutes or more on a CPU"),
    "OMP_NUM_THREADS=1 python bench/tinyworld_study.py --name qr-full1e-4-s1 --config configs/tinyworld-quality.yaml "
    "--seed 1 --steps 1200 --eval-every 300 --set adapter.kind=full --set optim.student_lr=1e-4": study("trains a student on the quality recipe: half an hour or more on a CPU"),
    "OMP_NUM_THREADS=1 python bench/tinyworld_study.py --name qr-lora3e-4-r41-s0 --config configs/tinyworld-quality.yaml "
    "--seed 0 --steps 1200 --eval-every 300 --set adapter.kind=lora --set optim.student_lr=3e-4 "
    "--set adapter.student_rank=41": study("trains a student on the quality recipe: half an hour or more on a CPU"),
    "python bench/tinyworld_study.py --plot docs/img/tinyworld_curves_round9.png --only \"^(q-c3reg001-|qr-)\" "
    "--json docs/perf/tinyworld_study_round9.json": study(PLOT_WHY),
    "OMP_NUM_THREADS=1 python bench/tinyworld_study.py --name qr-lora3e-4-s0 --config configs/tinyworld-quality.yaml "
    "--seed 0 --steps 1200 --eval-every 300 --set adapter.kind=lora --set optim.student_lr=3e-4": study("trains a student on the quality recipe: an hour or more on a CPU"),
    "OMP_NUM_THREADS=1 python bench/tinyworld_study.py --name quality-reg-s0 --config configs/tinyworld-quality.yaml "
    "--seed 0 --steps 1200 --eval-every 1200 --export": study("trains and exports the shipped quality student"),
    # round 10
    "OMP_NUM_THREADS=1 python bench/tinyworld_study.py --name qr-lora3e-4-r41-s1 --config configs/tinyworld-quality.yaml "
    "--seed 1 --steps 1200 --eval-every 100 --set adapter.kind=lora --set optim.student_lr=3e-4 "
    "--set adapter.student_rank=41": study("trains a student on the quality recipe: half an hour or more on a CPU"),
    "OMP_NUM_THREADS=1 python bench/tinyworld_study.py --name qr-dora3e-4-s2 --config configs/tinyworld-quality.yaml "
    "--seed 2 --steps 1200 --eval-every 100 --set adapter.kind=dora --set optim.student_lr=3e-4": study(
        "trains a student on the quality recipe: 40 minutes or more on a CPU"),
    "python bench/tinyworld_study.py --plot docs/img/tinyworld_curves_round10.png --only \"^(q-c3reg001-|qr-)\" "
    "--json docs/perf/tinyworld_study_round10.json": study(PLOT_WHY),
    "OMP_NUM_THREADS=1 python bench/tinyworld_study.py --name long-lorad-s1 --config configs/tinyworld-quality.yaml "
    "--seed 1 --steps 10000 --eval-every 250 --checkpoint-every 250 --set adapter.kind=lorad "
    "--set optim.student_lr=0.003": study(
        "trains 10,000 steps: 3-4 hours on a CPU, in pieces"),
    "python bench/tinyworld_study.py --plot docs/img/tinyworld_curves_round11.png --only "
    "\"^(long-lorad-|q-c3reg001-|qf64-)\" --json docs/perf/tinyworld_study_round11.json": study(PLOT_WHY),
    quality_variant("qf64", "--set adapter.fake_rank=64"): study("trains a student on the quality recipe: 25 minutes or more on a CPU"),
    "OMP_NUM_THREADS=1 python bench/tinyworld_study.py --name long-lorad-s0 --config configs/tinyworld-quality.yaml "
    "--seed 0 --steps 10000 --eval-every 250 --checkpoint-every 250 --set adapter.kind=lorad "
    "--set optim.student_lr=0.003": study(
        "trains 10,000 steps: 3-4 hours on a CPU, in pieces; tests/test_bench_study_resume.py continues killed and "
        "stopped runs at toy size"),
    # round 12
    "OMP_NUM_THREADS=1 python bench/tinyworld_study.py --name q2400-s0 --config configs/tinyworld-quality.yaml "
    "--seed 0 --steps 2400 --eval-every 300 --set adapter.kind=lorad --set optim.student_lr=0.003 --export": study(
        "trains 2400 steps of the quality recipe: an hour or more on a CPU"),
    "OMP_NUM_THREADS=1 python bench/tinyworld_study.py --name q900-s0 --config configs/tinyworld-quality.yaml "
    "--seed 0 --steps 900 --eval-every 300 --set adapter.kind=lorad --set optim.student_lr=0.003": study(
        "trains 900 steps of the quality recipe: 20 minutes or more on a CPU"),
    quality_variant("qc5", "--set optim.conv_lr_scale=5"): study("trains a student on the quality recipe: 25 minutes or more on a CPU"),
    "python bench/tinyworld_study.py --plot docs/img/tinyworld_curves_round12.png --only "
    "\"^(q2400-|q900-|qc5-|q-c3reg001-|long-lorad-)\" --include-json docs/perf/tinyworld_study_round11.json "
    "--json docs/perf/tinyworld_study_round12.json": study(
        PLOT_WHY + "; tests/test_bench_study_plot.py runs --include-json on made-up rounds"),
    # round 13
    quality_variant("qup03", "--set vsd.regression_weight=0.03 --set vsd.regression_ramp=up"): study(
        "trains a student on the quality recipe: 25 minutes or more on a CPU; tests/test_distill_options.py runs "
        "the ramp at toy size"),
    quality_variant("qdown02", "--set vsd.regression_weight=0.02 --set vsd.regression_ramp=down"): study(
        "trains a student on the quality recipe: 25 minutes or more on a CPU"),
    quality_variant("qw015", "--set vsd.regression_weight=0.015"): study("trains a student on the quality recipe: 25 minutes or more on a CPU"),
    quality_variant("qc2", "--set optim.conv_lr_scale=2"): study("trains a student on the quality recipe: 25 minutes or more on a CPU"),
    "python bench/tinyworld_study.py --plot docs/img/tinyworld_curves_round13.png --only "
    "\"^(qup03-|qdown02-|qw015-|qc2-|q-c3reg001-)\" --include-json docs/perf/tinyworld_study_round7.json "
    "--json docs/perf/tinyworld_study_round13.json": study(PLOT_WHY),
    # round 14
    "wadi eval --mode onestep --lorad outputs/tinyworld-quality/student.lorad.safetensors "
    "--out outputs/tinyworld-quality/eval.json": Run("--n 8 --seeds 0", needs=("tinyworld-quality",),
                                                      makes=("outputs/tinyworld-quality/eval.json",)),
    quality_variant("qT750", "--set vsd.timestep=750"): study("trains a student: 30-70 minutes on this CPU"),
    quality_variant("qT850", "--set vsd.timestep=850"): study("trains a student: 30-70 minutes on this CPU"),
    "python bench/tinyworld_study.py --plot docs/img/tinyworld_curves_round14.png --only "
    "\"^(qT750-|qT850-|q-c3reg001-)\" --include-json docs/perf/tinyworld_study_round7.json "
    "--json docs/perf/tinyworld_study_round14.json": study(PLOT_WHY),
    # round 15
    quality_variant("qb32", "--set train.batch_size=32"): study("trains a student at twice the recipe's batch: 40 minutes or more on this CPU"),
    quality_variant("qttur2", "--set vsd.fake_updates=2"): study("trains a student: 30 minutes or more on this CPU"),
    quality_variant("qcfg2", "--set vsd.guidance_scale=2.0 --set vsd.regression_weight=0"): study("trains a student: 25 minutes or more on this CPU"),
    "python bench/tinyworld_study.py --plot docs/img/tinyworld_curves_round15.png --only "
    "\"^(qb32-|qttur2-|qcfg2-|q-c3reg001-)\" --include-json docs/perf/tinyworld_study_round14.json "
    "--json docs/perf/tinyworld_study_round15.json": study(PLOT_WHY),
    "OMP_NUM_THREADS=1 python bench/tinyworld_study.py --name tq-lorad-s1 --config configs/tinyworld-quality.yaml "
    "--seed 1 --steps 1200 --stop-at 600 --eval-every 100": study(
        "trains half the quality recipe: 15 minutes or more on a CPU; tests/test_bench_study_stop.py runs --stop-at "
        "at toy size"),
    "OMP_NUM_THREADS=1 python bench/tinyworld_study.py --name tq-full1e-4-s1 --config configs/tinyworld-quality.yaml "
    "--seed 1 --steps 1200 --stop-at 600 --eval-every 100 --set adapter.kind=full --set optim.student_lr=1e-4": study(
        "trains half the quality recipe: 15 minutes or more on a CPU"),
    "python bench/tinyworld_study.py --plot docs/img/tinyworld_time_to_quality_round10.png --only "
    "\"^(tq-|qr-(lora3e-4-r41|dora3e-4)-s[12])\" --json docs/perf/tinyworld_time_to_quality_round10.json": study(
        PLOT_WHY),
    "OMP_NUM_THREADS=1 python bench/tinyworld_study.py --name tq-lora3e-4-s0 --config configs/tinyworld-quality.yaml "
    "--seed 0 --steps 1200 --stop-at 600 --eval-every 100 --set adapter.kind=lora --set optim.student_lr=3e-4": study(
        "trains half the quality recipe: 15 minutes or more on a CPU"),
    "python bench/tinyworld_study.py --plot docs/img/tinyworld_time_to_quality_round16.png --only "
    "\"^(tq-|qr-(lora3e-4-r41|dora3e-4)-s[12])\" --include-json docs/perf/tinyworld_time_to_quality_round10.json "
    "--json docs/perf/tinyworld_time_to_quality_round16.json": study(PLOT_WHY),
    "wadi demo --threads 1 --seed 1 --out outputs/demo-t1-s1": DEMO_SEED,
    "wadi demo --threads 2 --seed 1 --out outputs/demo-t2-s1": DEMO_SEED,
    "python bench/demo_runs.py --group \"600 of a 1200-step cosine, 1 thread=outputs/demo-t1-s*\" --group "
    "\"600 of a 1200-step cosine, 2 threads=outputs/demo-t2-s*\" --group \"cosine over the 600, 1 thread="
    "outputs/demo-old-t1-s*\" --plot docs/img/demo_recipes_round16.png --json docs/perf/demo_recipes_round16.json":
        Options("python {root}/bench/demo_runs.py --help",
                "needs the demo runs above; tests/test_bench_demo_runs.py runs it on made-up demo folders"),
    "python bench/distill_step_time.py --kinds lora --targets all-linear-conv --student-rank 41 --fake-rank 32 "
    "--batch 16 --steps 20 --threads 2 --set vsd.timestep=800 --set optim.conv_lr_scale=3 "
    "--set vsd.regression_weight=0.01 --set vsd.regression_pairs=32 --set vsd.regression_steps=2": Options(
        "python {root}/bench/distill_step_time.py --help",
        "a timing: minutes (tests/test_bench_step_time.py runs --targets and --set at toy size)"),
    # the shipped quality student through every command that reads it (the real file, small eval)
    "wadi sample --base assets/tinyworld/teacher --lorad assets/tinyworld/students/wadi-quality.lorad.safetensors "
    "--prompt \"a red circle on the left\" --out outputs/quality.png": Run(makes=("outputs/quality.png",)),
    "lorad merge assets/tinyworld/teacher assets/tinyworld/students/wadi-quality.lorad.safetensors "
    "outputs/quality-merged": Run(makes=("outputs/quality-merged/diffusion_pytorch_model.safetensors",)),
    "wadi eval --mode onestep --lorad assets/tinyworld/students/wadi-quality.lorad.safetensors "
    "--out outputs/quality-eval.json": Run("--n 8 --seeds 0", makes=("outputs/quality-eval.json",)),
    "python bench/tinyworld_study.py --plot docs/img/tinyworld_curves.png --json docs/perf/tinyworld_study.json":
        study("plots the study's runs (outputs/study)"),
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
