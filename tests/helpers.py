"""Toy models and data the tests build themselves (nothing is downloaded)."""
import random

from reasonlm.model import build_tiny, train_tokenizer
from reasonlm.tasks import get_task

TINY_TASK = {"digits": 1, "ops": "+-", "min_value": 0, "max_value": 9}


def rows(n, steps=(1, 4), seed=0):
    task = get_task("arithmetic", **TINY_TASK)
    rng = random.Random(seed)
    out = []
    for i in range(n):
        ex = task.generate(rng, rng.randint(*steps))
        out.append({"id": f"r{i}", "family": "arithmetic", "question": ex["question"], "steps": ex["steps"],
                    "answer": ex["answer"], "n_steps": ex["n_steps"], "meta": "{}"})
    return out


def tiny_model_and_tokenizer(seed=0, hidden=32, layers=2, heads=4):
    texts = ["user", "assistant", "system"] + [r["question"] + "\n" + "\n".join(r["steps"]) for r in rows(300)]
    tok = train_tokenizer(texts, vocab_size=300)
    model = build_tiny(tok, hidden_size=hidden, num_layers=layers, num_heads=heads, intermediate_size=hidden * 2,
                       max_position=256, seed=seed)
    return model, tok
