"""Data-stage benchmark: examples/s and peak memory of `reasonlm data` at scale.

    OMP_NUM_THREADS=1 python eval/bench_data.py 1000000              # auto workers (one per core)
    OMP_NUM_THREADS=1 python eval/bench_data.py 200000 --workers 1   # in-process
    python eval/bench_data.py 100000 --knobs '{}'                    # arithmetic's default knobs

Builds N arithmetic training problems (generated, verified by the checker, decontaminated,
written as arrow + parquet + three JSONL views) into a temporary directory with the real data
stage, then prints one markdown row: wall time, CPU time (main + workers, from getrusage), peak
RSS of the main process (getrusage) and of the largest worker (VmHWM from /proc). No torch.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import tempfile
import threading
import time

TINY_CPU = {"digits": 1, "ops": "+-*", "min_value": 0, "max_value": 99, "trivial_ops": False}  # recipes/tiny-cpu.yaml


def watch_workers(peak: dict, stop: threading.Event) -> None:
    """Peak RSS (VmHWM) of our child processes, read from /proc once a second. getrusage's
    RUSAGE_CHILDREN cannot tell: a spawned worker is forked from this process before it execs a
    fresh interpreter, and the kernel keeps that moment's RSS (a copy of ours) as its high-water mark."""
    me = str(os.getpid())
    while not stop.wait(1.0):
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                with open(f"/proc/{pid}/stat") as f:
                    if f.read().rsplit(")", 1)[1].split()[1] != me:  # field 4: parent pid
                        continue
                with open(f"/proc/{pid}/status") as f:
                    hwm = next(int(line.split()[1]) for line in f if line.startswith("VmHWM"))
                peak[pid] = max(peak.get(pid, 0), hwm)
            except (OSError, StopIteration, IndexError):
                continue


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("n", type=int, nargs="?", default=1_000_000, help="training problems to generate")
    p.add_argument("--workers", type=int, default=0, help="data.workers (0 = auto)")
    p.add_argument("--steps", default="1,6", help="train_steps lo,hi")
    p.add_argument("--knobs", default=json.dumps(TINY_CPU), help="arithmetic knobs as JSON")
    p.add_argument("--keep", default="", help="write here and keep it instead of a temp dir")
    args = p.parse_args()

    import datasets
    from reasonlm import data
    from reasonlm.config import DataConfig, Recipe
    from reasonlm.data.generate import resolve_workers

    datasets.disable_progress_bars()
    lo, hi = (int(x) for x in args.steps.split(","))
    cfg = DataConfig(tasks=[{"name": "arithmetic", "weight": 1.0, "args": json.loads(args.knobs)}],
                     train_steps=[lo, hi], ood_steps=[hi + 1, hi + 2], n_train=args.n, n_base=0,
                     workers=args.workers, seed=0)
    out = args.keep or tempfile.mkdtemp(prefix="bench_data_")
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu0 = usage.ru_utime + usage.ru_stime  # imports are not the data stage's work
    peak, stop = {}, threading.Event()
    threading.Thread(target=watch_workers, args=(peak, stop), daemon=True).start()
    try:
        t0 = time.perf_counter()
        path = data.run(Recipe(out_dir=out, data=cfg))
        seconds = time.perf_counter() - t0
        stop.set()
        size = int(subprocess.run(["du", "-sb", path], capture_output=True, text=True).stdout.split()[0])
    finally:
        if not args.keep:
            shutil.rmtree(out, ignore_errors=True)
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu_main = me.ru_utime + me.ru_stime - cpu0
    cpu_kids = kids.ru_utime + kids.ru_stime  # worker processes (reaped when the pool closes)
    workers = resolve_workers(cfg, args.n)
    # On a shared machine wall-clock rate depends on the neighbours; CPU-seconds per example do not.
    # "free-core rate" = what the same CPU work gives with all `cores` to ourselves (an estimate).
    per_cpu = args.n / (cpu_main + cpu_kids)
    cores = min(os.cpu_count(), max(1, workers))
    print("| examples | train_steps | knobs | workers | seconds | examples/s | CPU s (main + workers) | "
          "examples per CPU s | free-core rate | peak RSS main | peak RSS worker | on disk | load avg |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    print(f"| {args.n:,} | {lo}-{hi} | `{args.knobs}` | {workers} | {seconds:.1f} | {args.n / seconds:,.0f} | "
          f"{cpu_main:.0f} + {cpu_kids:.0f} | {per_cpu:,.0f} | ~{per_cpu * cores:,.0f}/s on {cores} cores | "
          f"{me.ru_maxrss / 1024:,.0f} MB | {max(peak.values(), default=0) / 1024:,.0f} MB | {size / 1e6:,.0f} MB | "
          f"{os.getloadavg()[0]:.1f} |")


if __name__ == "__main__":
    main()
