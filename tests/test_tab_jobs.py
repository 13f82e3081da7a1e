"""Job store, runner, stop escalation and queue of the trainer tab (driven by a fake trainer process)."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import pytest
import yaml
from tab_runner_helpers import make_runner, wait_for
from wadi_lorad.trainer.jobs import EVENTS_FILE_NAME, STOP_FILE_ENV, procs
from wadi_lorad.trainer.jobs.runner import JobRefused, cli_command, parse_devices
from wadi_lorad.trainer.jobs.store import Job, JobStore
from wadi_lorad.trainer.jobs.tail import EventTail


def submit(runner, tmp_path, name="run", devices="cpu", queue=True, extra=(), **cfg):
    cfg.setdefault("out", str(tmp_path / name))
    return runner.submit("distill", list(extra), cfg["out"], devices, queue=queue, config_yaml=yaml.safe_dump(cfg))


def test_store_persists_across_instances(tmp_path):
    a = JobStore(tmp_path)
    job = a.add(Job(id="j1", kind="distill", argv=["x", "a b"], job_dir="d", out_dir="o", device="0,1"))
    a.update("j1", status="running", pid=123, message="hi")
    b = JobStore(tmp_path)  # a fresh instance, as after an app restart
    got = b.get("j1")
    assert got.argv == ["x", "a b"] and got.status == "running" and got.pid == 123 and got.device == "0,1"
    assert [j.id for j in b.list(statuses=("running",))] == [job.id]
    with pytest.raises(KeyError, match="no job 'nope'"):
        b.get("nope")
    with pytest.raises(KeyError, match="unknown job field"):
        b.update("j1", colour="red")


def test_job_runs_to_the_end_with_events_and_log(tmp_path):
    runner = make_runner(tmp_path)
    job = submit(runner, tmp_path, steps=6, sleep=0.01, sample_every=3)
    assert job.status == "running" and job.pid
    job = wait_for(runner, job.id, lambda j: not j.active)
    assert job.status == "finished" and job.returncode == 0
    tail = EventTail(job.out_dir)
    assert tail.update() == 1 + 6 + 2 + 1  # start, steps, samples, done
    p = tail.progress()
    assert (p.step, p.total, p.last_event) == (6, 6, "done")
    assert p.losses == {"student": pytest.approx(1 / 6), "fake": pytest.approx(0.56)}
    assert p.sample.endswith("sample_00006.png")
    assert "fake trainer: steps 0..6" in runner.log_tail(job)


def test_failed_exit_code_is_reported(tmp_path):
    runner = make_runner(tmp_path)
    job = submit(runner, tmp_path, steps=1, sleep=0, exit_code=3)
    job = wait_for(runner, job.id, lambda j: not j.active)
    assert job.status == "failed" and job.returncode == 3 and "exit code 3" in job.message


def test_cooperative_stop_frees_quickly(tmp_path):
    runner = make_runner(tmp_path)
    job = submit(runner, tmp_path, steps=10_000, sleep=0.02)
    wait_for(runner, job.id, lambda j: EventTail(j.out_dir).update() > 3)
    t0 = time.time()
    runner.stop(job.id)
    job = wait_for(runner, job.id, lambda j: not j.active)
    freed = time.time() - t0
    assert job.status == "stopped" and job.returncode == 0, job
    assert procs.group_pids(job.pid) == []
    assert freed < 2.0, freed
    tail = EventTail(job.out_dir)
    tail.update()
    assert tail.records[-1]["event"] == "stopped"
    print(f"\ncooperative stop-to-freed: {freed:.2f} s")


def test_stop_escalates_to_process_group_kill_within_10s(tmp_path):
    """A trainer that ignores the stop file AND SIGTERM, with a forked helper: SIGKILL to the group frees all."""
    runner = make_runner(tmp_path, grace_s=5.0, grace_steps=0.0)  # grace 5 s + term 3 s
    job = submit(runner, tmp_path, steps=10_000, sleep=0.05, honour_stop=False, ignore_term=True, child=True)
    wait_for(runner, job.id, lambda j: len(procs.group_pids(j.pid)) >= 3)  # wrapper, trainer, helper
    members = procs.group_pids(job.pid)
    t0 = time.time()
    runner.stop(job.id)
    job = wait_for(runner, job.id, lambda j: not j.active, timeout=20)
    freed = time.time() - t0
    assert job.status == "killed" and "SIGKILL" in job.message, job
    assert all(not procs.pid_alive(p) for p in members)
    assert runner.grace_s + runner.term_s <= freed < 10.0, freed
    print(f"\nescalated stop-to-freed (grace {runner.grace_s} s + term {runner.term_s} s): {freed:.2f} s")


def test_queue_and_refusal_per_device(tmp_path):
    runner = make_runner(tmp_path)
    first = submit(runner, tmp_path, name="a", steps=10_000, sleep=0.02)
    with pytest.raises(JobRefused, match=f"device cpu is busy with job {first.id}"):
        submit(runner, tmp_path, name="b", queue=False, steps=1)
    second = submit(runner, tmp_path, name="c", steps=2, sleep=0)
    assert second.status == "queued" and f"queued behind job {first.id} on device cpu" in second.message
    other_gpu = submit(runner, tmp_path, name="d", devices="1", steps=1, sleep=0)
    assert other_gpu.status == "running"  # a different device is not blocked
    runner.stop(first.id)
    second = wait_for(runner, second.id, lambda j: j.status == "finished")
    assert second.started >= runner.store.get(first.id).ended
    # Only the refused job's folder is absent from the store; nothing half-created remains running.
    assert {j.status for j in runner.store.list()} == {"stopped", "finished"}


def test_cancel_a_queued_job(tmp_path):
    runner = make_runner(tmp_path)
    first = submit(runner, tmp_path, name="a", steps=10_000, sleep=0.02)
    second = submit(runner, tmp_path, name="b", steps=1)
    assert runner.stop(second.id).status == "cancelled"
    runner.stop(first.id)
    wait_for(runner, first.id, lambda j: not j.active)
    runner.poll()
    assert runner.store.get(second.id).status == "cancelled" and runner.store.get(second.id).pid is None


def test_restarted_runner_reattaches_and_stops_a_running_job(tmp_path):
    first = make_runner(tmp_path)
    job = submit(first, tmp_path, steps=10_000, sleep=0.02)
    del first  # the app goes away; the job keeps running
    second = make_runner(tmp_path)  # a new app on the same jobs folder
    again = second.store.get(job.id)
    assert again.status == "running" and procs.pid_alive(again.pid, again.pid_start)
    second.stop(job.id)
    done = wait_for(second, job.id, lambda j: not j.active)
    assert done.status == "stopped" and done.returncode == 0  # exit status read from the wrapper's file


def test_job_that_ended_while_no_app_ran(tmp_path):
    first = make_runner(tmp_path)
    job = submit(first, tmp_path, steps=2, sleep=0)
    end = time.time() + 20
    while procs.pid_alive(job.pid) and time.time() < end:  # no poll(): nobody watches
        first._popen[job.id].poll()
        time.sleep(0.05)
    assert first.store.get(job.id).status == "running"
    assert make_runner(tmp_path).store.get(job.id).status == "finished"  # learnt from the exit file
    # A record whose process vanished without an exit file is "lost", not "running" forever.
    store = JobStore(tmp_path / "jobs")
    store.add(Job(id="ghost", kind="distill", argv=[], job_dir=str(tmp_path / "ghost"), out_dir="o",
                  status="running", pid=job.pid, pid_start=(job.pid_start or 0) + 1))
    assert make_runner(tmp_path).store.get("ghost").status == "lost"


def test_arguments_never_reach_a_shell(tmp_path):
    runner = make_runner(tmp_path)
    evil = f"$(touch {tmp_path}/pwned); touch {tmp_path}/pwned2 | cat"
    argv_file = tmp_path / "argv.json"
    job = submit(runner, tmp_path, steps=1, sleep=0, argv_file=str(argv_file), extra=["--title", evil])
    wait_for(runner, job.id, lambda j: not j.active)
    assert json.loads(argv_file.read_text())[-2:] == ["--title", evil]
    assert not (tmp_path / "pwned").exists() and not (tmp_path / "pwned2").exists()


def test_stop_file_env_and_gpu_visibility(tmp_path):
    runner = make_runner(tmp_path)
    probe = tmp_path / "probe.py"
    probe.write_text("import json,os,sys; json.dump({k: os.environ.get(k) for k in sys.argv[2:]}, open(sys.argv[1], 'w'))")
    runner.command = lambda sub, args, devs, py: [py, str(probe), *args]
    job = runner.submit("distill", [str(tmp_path / "env.json"), STOP_FILE_ENV, "CUDA_VISIBLE_DEVICES"],
                        tmp_path / "o", devices="1,0")
    wait_for(runner, job.id, lambda j: not j.active)
    env = json.loads((tmp_path / "env.json").read_text())
    assert env == {STOP_FILE_ENV: str(Path(job.job_dir) / "STOP"), "CUDA_VISIBLE_DEVICES": "0,1"}


def test_command_lines():
    assert parse_devices("cpu") == ("cpu",) and parse_devices(" 1, 0 ,1") == ("0", "1")
    with pytest.raises(ValueError, match="devices: expected 'cpu' or GPU indices"):
        parse_devices("0;rm -rf /")
    one = cli_command("distill", ["--config", "c.yaml"], ("0",), python="py")
    assert one[0] == "py" and one[1].endswith("__main__.py") and one[2:] == ["distill", "--config", "c.yaml"]
    two = cli_command("distill", ["--config", "c.yaml"], ("0", "1"), python="py")
    assert two[:6] == ["py", "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2"]
    assert two[6].endswith("__main__.py") and two[7:] == ["distill", "--config", "c.yaml"]


def test_event_tail_is_incremental_and_skips_torn_lines(tmp_path):
    path = tmp_path / EVENTS_FILE_NAME
    tail = EventTail(tmp_path)
    assert tail.update() == 0 and tail.progress().text() == "waiting for the first step..."
    with open(path, "w") as fh:
        fh.write(json.dumps({"event": "step", "step": 1, "total_steps": 4, "loss_student": 2.0, "time": 100.0}) + "\n")
        fh.write("{not json}\n")
        fh.write(json.dumps({"event": "step", "step": 3, "loss_student": 1.0, "time": 101.0}) + "\n")
        fh.write('{"event": "step", "st')  # being written
    assert tail.update() == 2
    p = tail.progress()
    assert (p.step, p.total) == (3, 4)
    assert p.it_s == pytest.approx(2.0) and p.eta_s == pytest.approx(0.5)  # derived from the timestamps
    assert "step 3 / 4 (75 %)" in p.text() and "2.00 it/s" in p.text()
    with open(path, "a") as fh:
        fh.write('ep": 4}\n')
    assert tail.update() == 1 and tail.progress().step == 4
    assert tail.loss_series() == {"student": ([1, 3], [2.0, 1.0])}


def test_wrapper_reports_missing_program(tmp_path):
    runner = make_runner(tmp_path)
    runner.command = lambda sub, args, devs, py: [str(tmp_path / "no-such-program")]
    job = runner.submit("distill", [], tmp_path / "o")
    job = wait_for(runner, job.id, lambda j: not j.active)
    assert job.status == "failed" and job.returncode == 127
    assert "cannot start" in runner.log_tail(job)


@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc")
def test_pid_start_time_tells_processes_apart():
    me = os.getpid()
    assert procs.pid_alive(me, procs.pid_start_time(me))
    assert not procs.pid_alive(me, procs.pid_start_time(me) + 1)


def test_log_tail_keeps_the_last_state_of_progress_bars(tmp_path):
    runner = make_runner(tmp_path)
    job = Job(id="x", kind="distill", argv=[], job_dir=str(tmp_path), out_dir=str(tmp_path))
    (tmp_path / "log.txt").write_bytes(b"$ wadi distill\nbar  10%\rbar  50%\rbar 100%\r\ndone\n" + b"x\n" * 50)
    assert runner.log_tail(job, max_lines=53).split("\n")[:3] == ["$ wadi distill", "bar 100%", "done"]
    assert runner.log_tail(job, max_lines=2) == "x\nx"
