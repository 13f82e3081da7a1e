"""Stop-to-freed time of the trainer tab's job runner, with the memory a real job holds.

    python bench/tab_stop_to_freed.py [--gb 8] [--grace 5] [--term 3]

Starts a stand-in trainer through :class:`JobRunner` (the tab's code path) that fills
``--gb`` of GPU memory (CUDA, when torch sees a GPU) or of RAM, then asks it to stop:

* ``cooperative``: the trainer honours the stop file (checked every step);
* ``hung``: it ignores the stop file and SIGTERM, so only the process-group SIGKILL
  after ``grace + term`` seconds frees it.

"Freed" is measured from outside the job: the GPU's used memory (nvidia-smi) back to
its idle level, or, on CPU, no live process left in the job's group.  Prints one line
per case and the ratio to the 10 s target.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
import _bootstrap  # noqa: E402

_bootstrap.register()
from wadi_lorad.trainer.jobs import procs  # noqa: E402
from wadi_lorad.trainer.jobs.runner import JobRunner  # noqa: E402
from wadi_lorad.trainer.jobs.store import JobStore  # noqa: E402

TRAINER = r'''
import os, signal, sys, time
gb, honour, ignore_term, ready = float(sys.argv[1]), sys.argv[2] == "1", sys.argv[3] == "1", sys.argv[4]
if ignore_term:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
try:
    import torch
    cuda = torch.cuda.is_available()
except ImportError:
    cuda = False
if cuda:
    hold = torch.empty(int(gb * 2**30), dtype=torch.uint8, device="cuda"); hold.fill_(1); torch.cuda.synchronize()
else:
    hold = bytearray(int(gb * 2**30))
    for i in range(0, len(hold), 4096):
        hold[i] = 1
open(ready, "w").write("cuda" if cuda else "cpu")
stop = os.environ["WADI_STOP_FILE"]
while True:
    time.sleep(0.05)  # one "step"
    if honour and os.path.exists(stop):
        sys.exit(0)
'''


def gpu_used_mib() -> int | None:
    if not shutil.which("nvidia-smi"):
        return None
    out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits", "-i", "0"],
                         capture_output=True, text=True, check=False).stdout.strip()
    return int(out.splitlines()[0]) if out else None


def run_case(tmp: Path, name: str, gb: float, honour: bool, ignore_term: bool, grace: float, term: float) -> float:
    script = tmp / "hold.py"
    script.write_text(TRAINER)
    ready = tmp / f"{name}.ready"
    runner = JobRunner(JobStore(tmp / name), grace_s=grace, term_s=term,
                       command=lambda s, a, d, py: [py, str(script), *a])
    idle = gpu_used_mib()
    job = runner.submit("bench", [str(gb), "1" if honour else "0", "1" if ignore_term else "0", str(ready)], tmp / name)
    while not ready.exists():
        runner.poll()
        time.sleep(0.05)
    device = ready.read_text()
    held = gpu_used_mib() if device == "cuda" else None
    t0 = time.time()
    runner.stop(job.id)
    runner.start_monitor(0.1)  # the app's monitor thread drives the escalation
    while True:
        gone = not procs.group_pids(job.pid)
        if device == "cuda":
            used = gpu_used_mib()
            gone = gone and used is not None and idle is not None and used <= idle + 256
        if gone:
            break
        time.sleep(0.02)
    freed = time.time() - t0
    runner.close()
    while runner.store.get(job.id).active:
        runner.poll()
        time.sleep(0.02)
    st = runner.store.get(job.id)
    mem = f"GPU {held - idle} MiB held" if held is not None and idle is not None else f"{gb:g} GiB RAM held"
    print(f"{name:12s} device={device:4s} {mem:22s} stop-to-freed {freed:6.2f} s  "
          f"({freed / 10.0:.2f} x the 10 s target)  status={st.status}: {st.message}", flush=True)
    return freed


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--gb", type=float, default=2.0)
    ap.add_argument("--grace", type=float, default=5.0)
    ap.add_argument("--term", type=float, default=3.0)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        times = [run_case(tmp, "cooperative", args.gb, True, False, args.grace, args.term),
                 run_case(tmp, "hung", args.gb, False, True, args.grace, args.term)]
    return 0 if max(times) < 10.0 else 1


if __name__ == "__main__":
    sys.exit(main())
