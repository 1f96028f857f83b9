"""`reasonlm SUBCOMMAND RECIPE [section.key=value ...]`: each subcommand is one stage function."""
from __future__ import annotations

import argparse
import os
import sys


def _recipe(args):
    from reasonlm.config import load_recipe
    overrides = list(args.overrides)
    return load_recipe(args.recipe, overrides)


def cmd_data(args):
    from reasonlm import data
    recipe = _recipe(args)
    data.run(recipe.data, recipe.out_dir)


def cmd_base(args):
    from reasonlm import base
    base.run(_recipe(args))


def cmd_train(args):
    from reasonlm import train
    recipe = _recipe(args)
    train.run(recipe.train, recipe.out_dir, "train" if recipe.train.format == "cot" else "train-direct", recipe.threads)


def cmd_eval(args):
    from reasonlm import evaluate
    recipe = _recipe(args)
    report = evaluate.run(recipe.eval, recipe.out_dir, recipe.train.format, threads=recipe.threads)
    print(evaluate.markdown(report))
    gate(report, recipe.eval.min_accuracy)


def cmd_pipeline(args):
    from reasonlm import pipeline
    recipe = _recipe(args)
    report = pipeline.run(recipe)
    gate(report, recipe.eval.min_accuracy)


def cmd_chat(args):
    from reasonlm import chat
    chat.main(args)


def gate(report, min_accuracy):
    acc = report.get("accuracy")
    if min_accuracy and (acc is None or acc < min_accuracy):
        print(f"error: accuracy {acc} is below the recipe's min_accuracy {min_accuracy}", file=sys.stderr)
        sys.exit(1)


COMMANDS = {"data": cmd_data, "base": cmd_base, "train": cmd_train, "eval": cmd_eval,
            "pipeline": cmd_pipeline, "chat": cmd_chat}


def parser():
    p = argparse.ArgumentParser(prog="reasonlm", description="Teach small language models to reason step by step.")
    sub = p.add_subparsers(dest="command", required=True)
    for name in ("data", "base", "train", "eval", "pipeline"):
        s = sub.add_parser(name, help=COMMANDS[name].__doc__ or f"run the {name} stage")
        s.add_argument("recipe", help="recipe YAML (recipes/*.yaml)")
        s.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.lr=1e-3 out_dir=/tmp/run")
    s = sub.add_parser("chat", help="talk to a model in the terminal")
    s.add_argument("--model", required=True, help="base model: local path or Hub id")
    s.add_argument("--adapter", default=None, help="LoRA adapter directory")
    s.add_argument("--merged", action="store_true", help="merge the adapter into the base before chatting")
    s.add_argument("--recipe", default=None, help="recipe whose chat section sets the defaults")
    s.add_argument("--plain", action="store_true", help="no colours (for pipes)")
    s.add_argument("-p", "--prompt", default=None, help="answer one question and exit")
    return p


def main(argv=None):
    args = parser().parse_args(argv)
    if args.command != "chat":
        import datasets
        datasets.disable_progress_bars()
    try:
        COMMANDS[args.command](args)
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        sys.exit(130)
    except ValueError as e:  # every stage reports user errors as ValueError subclasses
        if os.environ.get("REASONLM_DEBUG"):
            raise
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
