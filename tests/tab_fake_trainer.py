"""A stand-in trainer for the job-runner tests: the event-log and stop-file contract, nothing else.

``python tab_fake_trainer.py --config cfg.yaml [--resume latest]`` with YAML keys
``out`` (folder), ``steps``, ``sleep`` (s per step), ``honour_stop``, ``ignore_term``
(SIGTERM ignored: only SIGKILL ends it), ``child`` (forks a helper that sleeps, to
prove the whole process group goes), ``sample_every``, ``argv_file`` (echo argv).
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main(argv):
    cfg = yaml.safe_load(Path(argv[argv.index("--config") + 1]).read_text())
    # Also reads the layout of tab_fake_config.FakeConfig (sections), flattened.
    for sec in ("train", "output"):
        cfg = {**(cfg.get(sec) or {}), **cfg}
    cfg.setdefault("out", cfg.get("dir"))
    cfg.setdefault("steps", cfg.get("max_steps", 10))
    resume = "--resume" in argv
    out = Path(cfg["out"])
    out.mkdir(parents=True, exist_ok=True)
    if cfg.get("argv_file"):
        Path(cfg["argv_file"]).write_text(json.dumps(argv))
    if cfg.get("ignore_term"):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if cfg.get("child"):
        subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    stop_file = Path(os.environ.get("WADI_STOP_FILE", out / "STOP"))
    ckpt = out / "ckpt.txt"
    start = int(ckpt.read_text()) if resume and ckpt.exists() else 0
    total = int(cfg.get("steps", 10))
    log = open(out / "events.jsonl", "a")

    def event(**rec):
        rec["time"] = time.time()
        log.write(json.dumps(rec) + "\n")
        log.flush()

    event(event="start", step=start, total_steps=total)
    print(f"fake trainer: steps {start}..{total}", flush=True)
    for step in range(start + 1, total + 1):
        time.sleep(float(cfg.get("sleep", 0.05)))
        event(event="step", step=step, total_steps=total, losses={"student": 1.0 / step, "fake": 0.5 + step * 0.01},
              it_s=20.0)
        if cfg.get("sample_every") and step % int(cfg["sample_every"]) == 0:
            from PIL import Image

            p = out / f"sample_{step:05d}.png"
            Image.new("RGB", (32, 32), (step * 20 % 256, 80, 160)).save(p)
            event(event="sample", step=step, path=str(p))
        ckpt.write_text(str(step))
        if cfg.get("honour_stop", True) and stop_file.exists():
            event(event="stopped", step=step)
            print(f"stopped at step {step}", flush=True)
            return 0
    event(event="done", step=total)
    return int(cfg.get("exit_code", 0))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
