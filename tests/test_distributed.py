"""reproduce.py under torchrun: 2 CPU workers give the same checkpoints and per-beat predictions
as 1 worker with the same threads per worker; after a worker is killed mid-run, torchrun's own
restart, or the same command started again, finishes the run without redoing finished work."""
import json
import os
import re
import signal
import subprocess
import sys

import pytest
import torch

from conftest import ROOT

TINY = ["quick", "--device", "cpu", "--archs", "mlp", "--epochs", "1",
        "--max-train-samples", "256", "--pgd-steps", "3", "--pgd-samples", "25",
        "--spsa-steps", "2", "--spsa-dirs", "8", "--aa-steps", "2", "--square-queries", "10"]
CORES = len(os.sched_getaffinity(0))


def command(tmp_path, name, nproc, restarts=0):
    res, data = tmp_path / name, tmp_path / f"{name}_ecg"
    data.mkdir(exist_ok=True)
    args = TINY + ["--results-dir", str(res), "--data-dir", str(data)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if nproc == 1:      # the same threads per worker as each of torchrun's workers gets
        env["OMP_NUM_THREADS"] = str(max(1, CORES // 2))
        cmd = [sys.executable, "reproduce.py", *args]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc-per-node={nproc}", f"--max-restarts={restarts}", "reproduce.py", *args]
    return res, cmd, env


def run(tmp_path, name, nproc, fault=None, expect=0):
    res, cmd, env = command(tmp_path, name, nproc)
    if fault is not None:
        env["NSR_FAULT_AFTER_TASKS"] = str(fault)
    p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert (p.returncode == 0) == (expect == 0), p.stdout[-3000:] + p.stderr[-3000:]
    return res, p.stdout + p.stderr


def outputs(res):
    ckpts = {p.name: torch.load(p, weights_only=True)["state_dict"]
             for p in sorted((res / "checkpoints").glob("*.pt"))}
    preds = {}
    for p in sorted((res / "attacks").glob("*.json")):
        r = json.loads(p.read_text())
        preds[p.name] = (r["indices"], r["clean_pred"], r["adv_pred"])
    return ckpts, preds


@pytest.fixture(scope="module")
def one_worker(tmp_path_factory):
    return run(tmp_path_factory.mktemp("dist"), "one", 1)


def test_two_workers_same_results_as_one(one_worker, tmp_path):
    res1, _ = one_worker
    res2, log = run(tmp_path, "two", 2)
    assert "[rank 0]" in log and "[rank 1]" in log          # both workers took tasks
    c1, p1 = outputs(res1)
    c2, p2 = outputs(res2)
    assert sorted(c1) == sorted(c2) and len(c1) == 10        # 5 models: last and best
    for name in c1:
        for k in c1[name]:
            assert torch.equal(c1[name][k], c2[name][k]), (name, k)
    assert sorted(p1) == sorted(p2) and len(p1) > 40
    assert p1 == p2
    assert (res2 / "report.md").read_text().count("- **") == 9      # rank 0 wrote the report


def test_killed_worker_restarts_without_redoing_work(one_worker, tmp_path):
    """A worker dies before its 4th task; the run fails, and the same command started again
    finishes it: every epoch and every result is computed exactly once over both runs."""
    res1, _ = one_worker
    _, log1 = run(tmp_path, "fault", 2, fault=3, expect=1)
    assert "simulated crash" in log1
    res, log2 = run(tmp_path, "fault", 2)
    assert_each_done_once(log1 + log2, res)
    assert "done, skipped" in log2 or "up to date, skipped" in log2
    # and the run's results are those of an uninterrupted run
    assert outputs(res)[1] == outputs(res1)[1]


def assert_each_done_once(log, res):
    for name in {m.group(1) for m in re.finditer(r"(mlp_\w+_s0) epoch 1/1:", log)}:
        assert log.count(f"{name} epoch 1/1:") == 1, name
    results = sorted((res / "attacks").glob("*.json"))
    assert len(re.findall(r" balanced acc [0-9.]+ \(clean", log)) == len(results)


def test_torchrun_restart_after_sigkill(one_worker, tmp_path):
    """A worker is SIGKILLed mid-task (right after the first model finished, both workers busy);
    torchrun --max-restarts 1 restarts both, and the run ends with the uninterrupted results,
    nothing finished computed twice."""
    res1, _ = one_worker
    res, cmd, env = command(tmp_path, "restart", 2, restarts=1)
    env["TORCH_DISABLE_SHARE_RDZV_TCP_STORE"] = "1"
    p = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True)
    lines, killed = [], None
    for line in p.stdout:
        lines.append(line)
        if killed is None and re.search(r"mlp_\w+_s0 epoch 1/1:", line):
            workers = subprocess.run(["pgrep", "-P", str(p.pid)], capture_output=True,
                                     text=True).stdout.split()
            killed = int(workers[0])
            os.kill(killed, signal.SIGKILL)
    assert p.wait(timeout=900) == 0, "".join(lines)[-3000:]
    log = "".join(lines)
    assert killed is not None and "exitcode: -9" in log, log[-3000:]     # torchrun saw it
    assert_each_done_once(log, res)
    assert "done, skipped" in log
    assert outputs(res)[1] == outputs(res1)[1]
    assert (res / "report.md").exists()


def test_max_restarts_on_the_shared_store_is_refused(monkeypatch, capsys):
    """torchrun's restarts on its shared store hang (pytorch#135712): say what to set instead."""
    import workers
    for k, v in {"WORLD_SIZE": "2", "RANK": "0", "TORCHELASTIC_MAX_RESTARTS": "3",
                 "TORCHELASTIC_USE_AGENT_STORE": "True"}.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(SystemExit) as e:
        workers.Workers()
    assert e.value.code == 2
    assert "TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1" in capsys.readouterr().err


def test_a_worker_attacks_trained_models_while_another_still_trains(monkeypatch):
    """No barrier between training and attacks: a worker done training takes the first ready
    task (an attack on a model that is trained), waits only when every task left is an attack
    on a model another worker still trains, and never runs a task another worker claimed."""
    import types
    import workers

    class Store:                               # torch.distributed Store.add: add, return total
        def __init__(self):
            self.counts = {}

        def add(self, key, n):
            self.counts[key] = self.counts.get(key, 0) + n
            return self.counts[key]

    w = workers.Workers.__new__(workers.Workers)
    w.world, w.rank, w.attempt, w.done = 2, 0, "0", 0
    w.store, w.dist = Store(), types.SimpleNamespace(barrier=lambda: None)
    trained, ran = {"A": False, "B": False}, []

    def task(label, then=None):
        def fn(argv):
            ran.append(label)
            if then:
                trained[then] = True
            return 0
        return (label, fn, [])

    tasks = [task("train A"), task("train B", then="B"), task("attack A 1"), task("attack B"),
             task("attack A 2")]
    w.store.add("nsr/p/0", 1)                  # the other worker took "train A"

    def other_worker_finishes_A(seconds):      # meanwhile it trains A, then claims attack A 2
        assert ran == ["train B", "attack B"], ran
        trained["A"] = True
        w.store.add("nsr/p/4", 1)

    monkeypatch.setattr(workers.time, "sleep", other_worker_finishes_A)
    w.run("p", tasks, ready=lambda t: not t[0].startswith("attack") or trained[t[0][7]])
    assert ran == ["train B", "attack B", "attack A 1"]
    assert w.store.counts["nsr/p/4"] == 2      # it tried attack A 2 and left it to the other
