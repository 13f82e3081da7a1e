"""Real processes: a run killed with SIGKILL resumes exactly; 2 CPU processes equal 1 at the same global batch."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch
import yaml
from distill_helpers import ROOT, cli, small_cfg, tiny_bases_fixture, write_prompts  # noqa: F401  (fixture)
from safetensors.torch import load_file
from wadi_lorad.trainer.config import save_yaml
from wadi_lorad.trainer.events import read_events

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def _config(tmp_path, base, prompts, name, **over):
    p = tmp_path / f"{name}.yaml"
    save_yaml(small_cfg(base, prompts, tmp_path / name, vsd__fake_guidance_scale=1.2, **over), p)
    return p


def _final(run_dir):
    return load_file(str(run_dir / "student.lorad.safetensors")), load_file(
        str(run_dir / "checkpoints" / sorted(os.listdir(run_dir / "checkpoints"))[-1] / "fake.safetensors"))


@pytest.mark.slow  # three CLI processes; the in-process resume test covers the same state in the fast suite
def test_sigkill_after_a_checkpoint_then_resume_is_exact(tiny_bases, tmp_path):
    base, prompts = tiny_bases("sd"), write_prompts(tmp_path / "p.txt")
    over = {"train__max_steps": 30, "output__checkpoint_every": 5}
    ref = _config(tmp_path, base, prompts, "ref", **over)
    r = subprocess.run(cli("distill", "--config", str(ref)), env=ENV, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    cfg = _config(tmp_path, base, prompts, "killed", **over)
    events = tmp_path / "killed" / "events.jsonl"
    proc = subprocess.Popen(cli("distill", "--config", str(cfg)), env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None:
        if any(e["event"] == "checkpoint" for e in read_events(events)):
            proc.send_signal(signal.SIGKILL)  # no clean-up of any kind: like a lost node
            break
        time.sleep(0.02)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    done = read_events(events)
    assert not any(e["event"] == "done" for e in done)
    killed_at = max(e["step"] for e in done if e["event"] == "step")
    assert killed_at < 30
    r = subprocess.run(cli("distill", "--config", str(cfg), "--resume", "latest"), env=ENV, capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    resumed = [e for e in read_events(events) if e["event"] == "resume"]
    assert len(resumed) == 1 and resumed[0]["step"] >= 5
    (s_ref, f_ref), (s_res, f_res) = _final(tmp_path / "ref"), _final(tmp_path / "killed")
    assert s_ref.keys() == s_res.keys()
    for k in s_ref:
        assert torch.equal(s_ref[k], s_res[k]), k  # bit-exact on CPU
    for k in f_ref:
        assert torch.equal(f_ref[k], f_res[k]), k


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_cpu_processes_equal_one_at_the_same_global_batch(tiny_bases, tmp_path):
    base, prompts = tiny_bases("sd"), write_prompts(tmp_path / "p.txt")
    one = _config(tmp_path, base, prompts, "one", train__max_steps=4, train__batch_size=4)
    two = _config(tmp_path, base, prompts, "two", train__max_steps=4, train__batch_size=2)
    from wadi_lorad.trainer.cli import main

    assert main(["distill", "--config", str(one)]) == 0  # the 1-process reference runs in this process
    launch = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
              "--master_port", str(_free_port()), str(ROOT), "distill", "--config", str(two)]
    r = subprocess.run(launch, env=ENV, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    start = [e for e in read_events(tmp_path / "two" / "events.jsonl") if e["event"] == "start"][0]
    assert start["processes"] == 2 and start["global_batch"] == 4
    l1 = [e for e in read_events(tmp_path / "one" / "events.jsonl") if e["event"] == "step"]
    l2 = [e for e in read_events(tmp_path / "two" / "events.jsonl") if e["event"] == "step"]
    for a, b in zip(l1, l2):
        assert abs(a["loss_fake"] - b["loss_fake"]) <= 1e-5 * abs(a["loss_fake"])
        assert abs(a["loss_student"] - b["loss_student"]) <= 1e-4 * abs(a["loss_student"]) + 1e-12
    (s1, f1), (s2, f2) = _final(tmp_path / "one"), _final(tmp_path / "two")
    for w1, w2 in ((s1, s2), (f1, f2)):
        num = torch.cat([(w1[k] - w2[k]).flatten() for k in w1]).norm()
        moved = torch.cat([w1[k].flatten() for k in w1 if k.endswith("A")]).norm()  # A starts at 0
        assert moved > 0 and num / moved < 1e-3, float(num / moved)
    assert yaml.safe_load((tmp_path / "two" / "config.yaml").read_text())["train"]["batch_size"] == 2
