"""`reasonlm SUBCOMMAND RECIPE [section.key=value ...]`: each subcommand is one stage function."""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pickle
import sys

import datasets
import torch.distributed as dist
import yaml
from safetensors import SafetensorError

import reasonlm
from reasonlm import base, chat, data, evaluate, pipeline, rl, serve, tasks, train
from reasonlm.config import RunPaths, ServeConfig, load_recipe, render_recipe
from reasonlm.export import export
from reasonlm.processes import cores_each, follow_launcher, run_processes


def _recipe(args):
    return load_recipe(args.recipe, list(args.overrides))  # each stage's run(recipe) loads its task files


def cmd_data(args):
    if args.stats:
        data.print_stats(args.stats)
        return
    if not args.recipe:
        raise ValueError("usage: reasonlm data RECIPE [key=value ...] | reasonlm data --stats DATASET_DIR")
    data.run(_recipe(args))


def cmd_base(args):
    base.run(_recipe(args))


def cmd_train(args):
    train.run(_recipe(args))


def cmd_rl(args):
    rl.run(_recipe(args))


def cmd_eval(args):
    """evaluate: `eval RECIPE [k=v]`, `eval SUITE.yaml --model M [--adapter A] [k=v]`, `eval compare A.json B.json`"""
    if args.recipe in ("compare", "baseline"):
        if len(args.overrides) != 2:
            raise ValueError(f"usage: reasonlm eval {args.recipe} A/report.json "
                             + ("B/report.json" if args.recipe == "compare" else "eval/baselines/NAME.json"))
        if args.recipe == "compare":
            print(evaluate.compare_markdown(evaluate.compare(*args.overrides, metric=args.metric)))
        else:
            evaluate.atomic_write(args.overrides[1], json.dumps(
                evaluate.make_baseline(evaluate.load_report(args.overrides[0])), indent=1) + "\n")
            print(f"baseline written to {args.overrides[1]}")
        return
    if args.search:  # the same validation as the setting written in the file
        args.overrides = [*args.overrides, f"{'' if evaluate.is_suite(args.recipe) else 'eval.'}search.method={args.search}"]
    if evaluate.is_suite(args.recipe):
        cfg = evaluate.load_suite(args.recipe, args.overrides)
        recipe = load_recipe(args.with_recipe) if args.with_recipe else None
        tasks.load_plugins(cfg.task_files + (recipe.task_files if recipe else []))
        report, out = evaluate.run_suite(cfg, args.model, args.adapter, recipe, args.out)
    else:
        recipe = _recipe(args)
        cfg = dataclasses.replace(recipe.eval, model=args.model or recipe.eval.model,
                                  adapter=args.adapter or recipe.eval.adapter)  # re-runs __post_init__
        out = args.out or RunPaths(recipe.out_dir).eval()
        report = evaluate.run(recipe, cfg, directory=out)
    if evaluate.is_main_process():
        print(evaluate.markdown(report))
        print(f"report: {os.path.join(out, 'report.json')}")
        gate(report, cfg.min_accuracy, cfg, args.baseline or cfg.baseline)


def cmd_pipeline(args):
    recipe = _recipe(args)
    report = pipeline.run(recipe, force=args.force)
    gate(report, recipe.eval.min_accuracy)


def cmd_config(args):
    """print the resolved recipe (overrides applied) as YAML, each setting with its documentation"""
    text = render_recipe(load_recipe(args.recipe, list(args.overrides)))  # read, not run: no task file is imported
    print(f"# {args.recipe}{' ' + ' '.join(args.overrides) if args.overrides else ''}, resolved by reasonlm "
          f"{reasonlm.__version__}")
    print(text, end="")


def cmd_chat(args):
    tasks.load_plugins(args.task_files + (load_recipe(args.recipe).task_files if args.recipe else []))
    chat.main(args)


def cmd_serve(args):
    """serve a model over the OpenAI-compatible HTTP API, with a web chat page at /"""
    recipe = load_recipe(args.recipe) if args.recipe else None
    tasks.load_plugins(args.task_files + (recipe.task_files if recipe else []))
    cfg = ServeConfig(**{k: v for k, v in vars(args).items() if k in SERVE_OPTIONS and v is not None})
    serve.main(cfg, recipe)


def cmd_tasks(args):
    """list every task family: where it came from and what it supports"""
    tasks.load_plugins(args.task_files)
    rows = [("family", "from", "makes", "checks steps without gold", "reads a typed question")]
    rows += [(d["name"], d["origin"], d["makes"], "yes" if d["steps_without_gold"] else "no",
              "yes" if d["parses_questions"] else "no") for d in tasks.describe()]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())


def cmd_export(args):
    export(args.run, args.merge, args.out, args.onnx, args.gguf)


def gate(report, min_accuracy, cfg=None, baseline=None):
    """Exit 1 when a metric falls below min_accuracy, a threshold, or the baseline (beyond its interval)."""
    failures = evaluate.check_gate(report, evaluate.load_baseline(baseline) if baseline else None,
                                   cfg.metrics if cfg else (), cfg.thresholds if cfg else None, min_accuracy)
    for line in failures:
        print(f"gate: {line}", file=sys.stderr)
    if failures:
        sys.exit(1)
    if baseline or (cfg and cfg.thresholds):
        print("gate: passed" + (f" (baseline {baseline})" if baseline else ""))


COMMANDS = {"data": cmd_data, "base": cmd_base, "train": cmd_train, "rl": cmd_rl, "eval": cmd_eval,
            "pipeline": cmd_pipeline, "config": cmd_config, "chat": cmd_chat, "export": cmd_export,
            "serve": cmd_serve, "tasks": cmd_tasks}
SERVE_OPTIONS = tuple(f.name for f in dataclasses.fields(ServeConfig))  # serve's flags are ServeConfig's fields

# What each subcommand's --help says after its options: the recipe sections it reads, one example.
EPILOGS = {
    "data": "recipe sections: data, out_dir\nexample: reasonlm data recipes/tiny-cpu.yaml data.n_train=5000",
    "base": "recipe sections: base, data (base_steps), train (report_to), out_dir, threads\n"
            "example: reasonlm base recipes/tiny-cpu.yaml base.steps=100",
    "train": "recipe sections: train, base (model), out_dir, threads, device\nexample: reasonlm train recipes/tiny-cpu.yaml train.lr=1e-3 "
             "train.report_to=[tensorboard]",
    "rl": "recipe sections: rl, base (model), train (report_to, data), out_dir, threads, device\n"
          "example: reasonlm rl recipes/tiny-cpu.yaml rl.reward=outcome rl.rounds=5",
    "eval": "recipe sections: eval, train (format, report_to), out_dir, threads; or a suite YAML (eval/*.yaml)\n"
            "example: reasonlm eval eval/ood.yaml --recipe recipes/tiny-cpu.yaml",
    "pipeline": "recipe sections: every one (data, base, train, eval), out_dir, threads, direct_baseline\n"
                "example: reasonlm pipeline recipes/tiny-cpu.yaml out_dir=/tmp/run train.steps=300",
    "config": "recipe sections: every one\nexample: reasonlm config recipes/tiny-cpu.yaml train.lr=1e-3 > my-recipe.yaml",
    "chat": "recipe sections: chat (with --recipe)\n"
            "example: reasonlm chat --model out/tiny-cpu/base --adapter out/tiny-cpu/train/adapter",
    "export": "recipe sections: none (reads the run's saved config)\nexample: reasonlm export out/tiny-cpu/train --merge",
    "serve": "recipe sections: chat.system, device, task_files (with --recipe)\n"
             "example: reasonlm serve --model out/tiny-cpu/base --adapter out/tiny-cpu/train/adapter --port 8000",
    "tasks": "recipe sections: none\nexample: reasonlm tasks --task-files docs/examples/clock.py",
}


def parser():
    p = argparse.ArgumentParser(prog="reasonlm", description="Teach small language models to reason step by step.")
    p.add_argument("--version", action="version", version=f"reasonlm {reasonlm.__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    for name in ("data", "base", "train", "rl", "eval", "pipeline", "config"):
        s = sub.add_parser(name, help=COMMANDS[name].__doc__ or f"run the {name} stage", epilog=EPILOGS[name],
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        s.add_argument("recipe", nargs="?" if name == "data" else None, help="recipe YAML (recipes/*.yaml)")
        s.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.lr=1e-3 out_dir=/tmp/run")
    s = sub.choices["data"]
    s.add_argument("--stats", default=None, metavar="PATH", help="print a built dataset's card statistics")
    s.usage = "reasonlm data RECIPE [key=value ...]\n       reasonlm data --stats DATASET_DIR"
    s = sub.choices["eval"]
    s.usage = ("reasonlm eval RECIPE|SUITE.yaml [key=value ...] [--model M] [--adapter A] [--recipe R] [--out DIR] "
               "[--baseline B.json] [--search METHOD]\n       reasonlm eval compare A/report.json B/report.json [--metric M]\n"
               "       reasonlm eval baseline REPORT.json eval/baselines/NAME.json")
    s.add_argument("--model", default=None, help="base model (local path or Hub id); overrides the suite/recipe")
    s.add_argument("--adapter", default=None, help="LoRA adapter directory or Hub id, or 'none'")
    s.add_argument("--recipe", dest="with_recipe", default=None,
                   help="suite runs: take model, adapter, format and {out_dir} from this recipe's outputs")
    s.add_argument("--out", default=None, help="output directory (default <out_dir>/eval[-SUITE] or out/eval/SUITE/MODEL)")
    s.add_argument("--baseline", default=None, help="CI gate: baseline report/file; exit 1 on a regression beyond its interval")
    s.add_argument("--metric", default="accuracy", help="compare: which per-problem metric (default accuracy)")
    s.add_argument("--search", default=None, metavar="METHOD",
                   help="decode with greedy, majority, best_of_n, step_retry or step_beam (eval.search.method; "
                        "docs/search.md)")
    sub.choices["pipeline"].add_argument("--force", action="store_true",
                                         help="rerun every stage, even those whose settings did not change")
    s = sub.add_parser("chat", help="talk to a model in the terminal", epilog=EPILOGS["chat"],
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    s.add_argument("--model", required=True, help="base model: local path or Hub id")
    s.add_argument("--adapter", default=None, help="LoRA adapter directory or Hub id")
    s.add_argument("--merged", action="store_true", help="merge the adapter into the base before chatting")
    s.add_argument("--recipe", default=None, help="recipe whose chat section sets the defaults")
    s.add_argument("--plain", action="store_true", help="no colours (for pipes)")
    s.add_argument("-p", "--prompt", default=None, help="answer one question and exit")
    s.add_argument("--task-files", nargs="+", default=[], metavar="FILE",
                   help="your own task families (Python files) for /verify; this runs their code")
    s = sub.add_parser("serve", help=cmd_serve.__doc__, epilog=EPILOGS["serve"],
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    s.add_argument("--model", required=True, help="base model: local path or Hub id")
    s.add_argument("--adapter", default=None, help="LoRA adapter directory or Hub id")
    s.add_argument("--merged", action="store_true", default=None, help="merge the adapter into the base")
    s.add_argument("--recipe", default=None, help="recipe whose chat section, device and task_files apply")
    s.add_argument("--task-files", nargs="+", default=[], metavar="FILE",
                   help="your own task families (Python files) for the verdicts; this runs their code")
    s.add_argument("--host", default=None, help="address to bind (default 127.0.0.1: this machine only)")
    s.add_argument("--port", type=int, default=None, help="port (default 8000; 0 = any free port)")
    s.add_argument("--name", default=None, help="model name in /v1/models (default: the adapter's or model's folder)")
    s.add_argument("--max-body-bytes", type=int, default=None, help="largest request body accepted")
    s.add_argument("--max-tokens", type=int, default=None, help="largest max_tokens a request may ask for")
    s.add_argument("--max-concurrent", type=int, default=None, help="requests in flight at once; more get 429")
    s.add_argument("--max-batch", type=int, default=None, help="requests decoded together in one batch")
    s = sub.add_parser("tasks", help=cmd_tasks.__doc__, epilog=EPILOGS["tasks"],
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    s.add_argument("--task-files", nargs="+", default=[], metavar="FILE",
                   help="also list the families of these Python files (this runs their code)")
    s = sub.add_parser("export", help="export a training run's adapter, or merge it into the base",
                       epilog=EPILOGS["export"], formatter_class=argparse.RawDescriptionHelpFormatter)
    s.add_argument("run", help="run directory (e.g. out/tiny-cpu/train) or adapter directory")
    s.add_argument("--merge", action="store_true", help="fold the adapter into the base weights")
    s.add_argument("--onnx", action="store_true", help="merged model as ONNX + tokenizer, for onnxruntime (RUN/onnx)")
    s.add_argument("--gguf", action="store_true", help="merged model as one GGUF file, for llama.cpp and Ollama (RUN/gguf)")
    s.add_argument("--out", default=None,
                   help="output directory (default RUN/merged, RUN/onnx, RUN/gguf or RUN/exported-adapter)")
    return p


def cpu_processes_requested() -> int:
    """How many processes `accelerate launch --cpu --num_processes N` asked for, or 0.

    accelerate 1.x runs a CPU launch without an MPI hostfile as ONE process, whatever
    --num_processes says. We read the launcher's own command line (our parent process) to
    find N, so the documented command really trains on N gloo processes.
    """
    if os.environ.get("ACCELERATE_USE_CPU", "").lower() != "true" or "RANK" in os.environ:
        return 0
    try:
        with open(f"/proc/{os.getppid()}/cmdline", "rb") as f:
            parent = [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
    except OSError:
        return 0
    if "launch" not in " ".join(parent) or "--mpirun_hostfile" in parent:
        return 0
    for i, a in enumerate(parent):
        if a == "--num_processes" and i + 1 < len(parent) and parent[i + 1].isdigit():
            return int(parent[i + 1])
        if a.startswith("--num_processes=") and a.split("=", 1)[1].isdigit():
            return int(a.split("=", 1)[1])
        if a == "--config_file" and i + 1 < len(parent):
            try:
                with open(parent[i + 1]) as f:
                    return int((yaml.safe_load(f) or {}).get("num_processes", 0))
            except (OSError, ValueError, TypeError):
                return 0
    return 0


def relaunch_on_cpu_processes(n: int, argv) -> None:
    """Re-run this command as n local processes of one gloo group (processes.run_processes, the one
    launcher) and exit with their status."""
    threads = int(os.environ.get("OMP_NUM_THREADS") or 0) or cores_each(n)
    print(f"reasonlm: starting {n} CPU processes ({threads} thread(s) each)", file=sys.stderr)
    sys.exit(run_processes(n, list(argv), threads))


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    follow_launcher()
    n = cpu_processes_requested()
    if n > 1:
        relaunch_on_cpu_processes(n, argv)
    p = parser()
    args, extra = p.parse_known_args(argv)
    if extra:  # eval takes key=value overrides after its options too; anything else is an error
        if args.command != "eval" or any(e.startswith("-") for e in extra):
            p.parse_args(argv)
        args.overrides += extra
    if args.command != "chat":
        datasets.disable_progress_bars()
    try:
        COMMANDS[args.command](args)
        close_process_group()
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        sys.exit(130)
    except USER_ERRORS as e:
        if os.environ.get("REASONLM_DEBUG"):
            raise
        print(f"error: {one_line(e)}", file=sys.stderr)
        sys.exit(2)


def close_process_group() -> None:
    """Tear down the process group a multi-process command joined, every process together, once
    its work is done. Left to interpreter exit, gloo's threads can abort a finished process ("terminate
    called without an active exception", exit status 250) after it has written everything."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


# What a user's input can cause, reported as one line (REASONLM_DEBUG=1 re-raises for the traceback):
# stage errors (ValueError subclasses, by convention), OSErrors on the paths a user named, weights
# files that are not safetensors, and pickled files that torch's weights_only loader refuses.
USER_ERRORS = (ValueError, OSError, SafetensorError, pickle.UnpicklingError)


def one_line(e: BaseException) -> str:
    """The error as a single line: an OSError names its path; a long message keeps its first line."""
    if isinstance(e, OSError) and e.strerror:
        text = f"{e.strerror}: {e.filename}" if e.filename else e.strerror
    else:
        text = str(e).strip() or type(e).__name__
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[0] + (" (REASONLM_DEBUG=1 shows the details)" if len(lines) > 1 else "")


if __name__ == "__main__":
    main()
