"""The workers of reproduce.py and benchmark.py: this process alone, or one of torchrun's
(Workers: a shared task queue over torch.distributed's store), the step every task runs
through, and the results folders one run holds (docs/distributed.md)."""
import contextlib
import io
import os
import sys
import time
from typing import Any, Callable, NamedTuple

import torch

from utils import hold_folder, release_folder, share_folders


class Task(NamedTuple):
    """One unit of the queue: a script's run() and what it takes (an attack script's argparse
    namespace, a training run's config dict); `cost` orders the queue (dearest first)."""
    label: str
    fn: Callable
    args: Any
    cost: float = 1.0


RESTART_HELP = """error: torchrun --max-restarts {k} needs TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 in
the environment. By default torchrun shares its rendezvous store with the workers, and workers it
restarts read the killed workers' addresses from it: they hang or fail in init_process_group
(pytorch/pytorch#135712, #167288; seen here with torch 2.13). Run either
    TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 torchrun --max-restarts {k} ... reproduce.py ...
or --max-restarts 0, and start the same command again after a failure (it resumes)."""


def check_restart_store():
    """Refuse torchrun's own restarts on the shared store: they hang (RESTART_HELP)."""
    k = os.environ.get("TORCHELASTIC_MAX_RESTARTS", "0")
    if k != "0" and os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True":
        if os.environ.get("RANK", "0") == "0":
            print(RESTART_HELP.format(k=k), file=sys.stderr, flush=True)
        raise SystemExit(2)


WAIT_POLL_S = 20        # how often a worker with only waiting tasks looks again


class Workers:
    """This process alone (plain python), or one of torchrun's workers. Under torchrun the
    engine is torch.distributed: a gloo process group (CPU barriers; a CUDA worker uses
    cuda:LOCAL_RANK), each worker torch.set_num_threads(cores // local workers), and work handed
    out through the group's store: each worker walks the task list in order and claims the
    first task that is ready and unclaimed (an atomic store.add on the task's key), so uneven
    tasks balance themselves and an attack starts as soon as its model is trained, while other
    models still train. The queue starts and ends with a barrier."""

    def __init__(self):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
        self.attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
        self.done = 0
        if self.world > 1:
            check_restart_store()
            import datetime
            import torch.distributed as dist
            self.dist = dist
            # long tasks (a CNN's 50 epochs) keep the others waiting at a barrier for hours
            dist.init_process_group("gloo", timeout=datetime.timedelta(days=7))
            self.store = dist.distributed_c10d._get_default_store()
            cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
            torch.set_num_threads(max(1, cores // local_world))

    def device(self, name):
        """--device auto/cuda under torchrun: one GPU per local rank."""
        if self.world > 1 and name in ("auto", "cuda") and torch.cuda.is_available():
            return f"cuda:{self.local_rank % torch.cuda.device_count()}"
        return name

    def run(self, phase, tasks, ready=lambda task: True):
        """Every task once over all workers. Order: the list's (put the longest first); a task
        with ready(task) False (an attack on a model still training) waits, and the worker
        takes the next ready one meanwhile."""
        if self.world == 1:
            for task in tasks:
                if not ready(task):
                    raise RuntimeError(f"{task[0]}: what it needs has not run (a bug)")
                self.step(task[0], task[1], task[2])
            return
        # every worker built its list from the same files (finished runs are left out) before
        # any worker starts a task: the lists, and so the task keys, agree. The store is new
        # at every start of the workers (check_restart_store), so the keys need no attempt
        # number (which torchrun counts per node, not globally).
        self.dist.barrier()
        left = list(range(len(tasks)))
        while left:
            i = next((i for i in left if ready(tasks[i])), None)
            if i is None:                   # only attacks on models other workers still train
                time.sleep(WAIT_POLL_S)
                continue
            left.remove(i)
            if self.store.add(f"nsr/{phase}/{i}", 1) == 1:        # this worker claimed it
                self.step(tasks[i][0], tasks[i][1], tasks[i][2])
        self.dist.barrier()

    def step(self, label, fn, args):
        fault = os.environ.get("NSR_FAULT_AFTER_TASKS")    # the tests' way to kill a worker
        if fault and self.rank == self.world - 1 and self.attempt == "0" \
                and self.done >= int(fault):
            print(f"rank {self.rank}: simulated crash before {label}", flush=True)
            os._exit(17)
        step(f"{label}" + (f" [rank {self.rank}]" if self.world > 1 else ""), fn, args)
        self.done += 1

    def agree(self, fn):
        """fn() on rank 0 (None or an error message); its answer on every worker."""
        msg = fn() if self.rank == 0 else None
        if self.world > 1:
            if self.rank == 0:
                self.store.set("nsr/agree", msg or "")
            else:
                msg = self.store.get("nsr/agree").decode() or None     # waits for rank 0
        return msg

    def rank0_first(self, fn):
        """fn() on rank 0, then the others (e.g. building the data cache once); only rank 0's
        stdout shows (errors go to stderr from every rank)."""
        if self.rank == 0:
            fn()
        if self.world > 1:
            self.dist.barrier()
        if self.rank != 0:
            with contextlib.redirect_stdout(io.StringIO()):
                fn()

    def close(self):
        if self.world > 1:
            self.dist.barrier()
            self.dist.destroy_process_group()


def describe(args):
    """What a task runs with, on one line: an argv as it is; a namespace or config, each
    setting that is set (not None or False)."""
    if isinstance(args, (list, tuple)):
        return " ".join(map(str, args))
    items = (vars(args) if not isinstance(args, dict) else args).items()
    text = lambda v: " ".join(map(str, v)) if isinstance(v, (list, tuple)) else str(v)
    return " ".join(f"{k}={text(v)}" for k, v in items if v is not None and v is not False)


def step(label, fn, args):
    """Run one task (fn(args): a script's run() or main(argv)); a non-zero exit stops the run."""
    print(f"\n=== {label}: {describe(args)}", flush=True)
    rc = fn(args)
    if rc:
        raise SystemExit(f"step failed ({label}), exit code {rc}: fix it and re-run to resume")


def hold_run_folders(workers, folders):
    """Rank 0 takes the folders (utils.hold_folder), the other workers share them: None, or
    the message naming the run that holds one."""
    def hold_all():
        for i, f in enumerate(folders):
            busy = hold_folder(f)
            if busy:
                for g in folders[:i]:
                    release_folder(g)
                return busy
    busy = workers.agree(hold_all)
    if not busy and workers.rank > 0:
        share_folders(folders)
    return busy
