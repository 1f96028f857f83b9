"""Run a reasonlm command as N local CPU processes of one gloo group (what `torch.distributed.run
--standalone` does): the one launcher, for a stage that starts its own processes (rl.processes)
and for the CLI when `accelerate launch --cpu --num_processes N` would run only one process.

Each process gets the environment torch.distributed's env:// rendezvous and Accelerate read
(MASTER_ADDR, MASTER_PORT, RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE) and its share of the
cores as OMP_NUM_THREADS. The processes print their own lines; when one fails the others are
stopped (they would wait for it in the next collective) and its exit code is returned, with no
launcher traceback on top.
"""
from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import sys
import time


def cores_each(processes: int, threads: int = 0) -> int:
    """Threads for each of `processes` processes sharing `threads` (0 = all the machine's cores),
    at least 1: the one rule for splitting cores (oversubscribed CPUs slow down many-fold)."""
    return max(1, (threads or os.cpu_count() or 1) // max(1, processes))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_processes(n: int, argv: list[str], threads: int) -> int:
    """`python -m reasonlm *argv` as n processes of one group; 0, or the first failure's exit code."""
    shared = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()), "WORLD_SIZE": str(n),
              "LOCAL_WORLD_SIZE": str(n), "OMP_NUM_THREADS": str(threads)}
    # SIGTERM to this process (a timeout, a cancelled job) must stop the group too: turn it into an
    # exception so the `finally` below runs; a SIGKILL cannot be caught: the children notice it
    # themselves (follow_launcher)
    previous = signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    shared[LAUNCHER] = str(os.getpid())
    procs = [subprocess.Popen([sys.executable, "-m", "reasonlm", *argv],
                              env={**shared, "RANK": str(rank), "LOCAL_RANK": str(rank)}) for rank in range(n)]
    try:
        while True:
            codes = [p.poll() for p in procs]
            failed = next((c for c in codes if c not in (None, 0)), None)
            if failed is not None or all(c == 0 for c in codes):
                return failed or 0
            time.sleep(0.2)
    finally:  # a failure, or an interrupt of this process: stop the rest
        signal.signal(signal.SIGTERM, previous)
        for p in procs:
            if p.poll() is None:
                p.terminate()
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


LAUNCHER = "REASONLM_LAUNCHER_PID"  # set in the processes run_processes starts


def follow_launcher() -> None:
    """In a process run_processes started (the CLI calls it first): end with the launcher, even
    when it is SIGKILLed. Linux delivers SIGTERM to this process when its parent dies (prctl
    PR_SET_PDEATHSIG, set here after exec: a preexec_fn could deadlock a threaded parent); a
    launcher already gone by now is caught by comparing the parent's pid."""
    launcher = os.environ.get(LAUNCHER)
    if not launcher:
        return
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
    if os.getppid() != int(launcher):
        sys.exit(128 + signal.SIGTERM)
