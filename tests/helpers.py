"""Toy models and data the tests build themselves (nothing is downloaded), and the stand-ins the
tests share. The `toy` fixture (a toy model and tokenizer, built once per module) is in conftest.py."""
import contextlib
import os
import random
import signal

from reasonlm.engine import StreamResult, plan_batches
from reasonlm.model import build_tiny, train_tokenizer
from reasonlm.tasks import get_task

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the repository

TINY_TASK = {"digits": 1, "ops": "+-", "min_value": 0, "max_value": 9}

TINY_RECIPE = {  # a whole pipeline in seconds (tests/test_pipeline_skip.py, test_pipeline_rl.py)
    "out_dir": "", "threads": 1, "direct_baseline": True,
    "data": {"tasks": [{"name": "arithmetic", "args": TINY_TASK}], "train_steps": [1, 3], "ood_steps": [4, 4],
             "n_train": 500, "n_validation": 10, "n_test_per_steps": 4, "n_base": 100, "workers": 1},
    "base": {"hidden_size": 32, "num_layers": 1, "num_heads": 4, "intermediate_size": 64, "max_position": 256,
             "steps": 2, "batch_tokens": 512, "seq_len": 128, "warmup_steps": 1},
    "train": {"steps": 2, "batch_tokens": 512, "seq_len": 128, "warmup_steps": 1, "eval_every": 0,
              "eval_samples": 0, "save_every": 0, "lora_r": 4, "lora_alpha": 8},
    "eval": {"batch_size": 16, "max_new_tokens": 24, "ladder_per_steps": 0},
}


def rows(n, steps=(1, 4), seed=0):
    task = get_task("arithmetic", **TINY_TASK)
    rng = random.Random(seed)
    out = []
    for i in range(n):
        ex = task.generate(rng, rng.randint(*steps))
        out.append({**ex.to_row(), "id": f"r{i}", "meta": "{}"})
    return out


@contextlib.contextmanager
def hang_guard(what: str, seconds: int = 60):
    """Fail (naming `what`) instead of hanging when the body runs past `seconds`: a guard for code
    that must never go exponential (a regex that backtracks catastrophically runs for hours), not a
    speed check, so the limit is far above any machine's time for the work. SIGALRM: main thread only."""
    def stop(signum, frame):
        raise AssertionError(f"still running after {seconds} s: {what}")
    previous = signal.signal(signal.SIGALRM, stop)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def tiny_model_and_tokenizer(seed=0, hidden=32, layers=2, heads=4):
    texts = ["user", "assistant", "system"] + [r["question"] + "\n" + "\n".join(r["steps"]) for r in rows(300)]
    tok = train_tokenizer(texts, vocab_size=300)
    model = build_tiny(tok, hidden_size=hidden, num_layers=layers, num_heads=heads, intermediate_size=hidden * 2,
                       max_position=256, seed=seed)
    return model, tok


def chatless_model_and_tokenizer(tied=True, hidden=32, layers=2, heads=4, extra_rows=0, seed=0):
    """A toy model whose tokenizer is like many real base models': no ChatML tokens, no chat
    template. `extra_rows` pads the embedding beyond the tokenizer (as Qwen's vocabularies are)."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    texts = ["user", "assistant", "system"] + [r["question"] + "\n" + "\n".join(r["steps"]) for r in rows(300)]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False)])
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"],
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                                       show_progress=False))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>",
                                        model_max_length=100_000)
    config = LlamaConfig(vocab_size=len(tokenizer) + extra_rows, hidden_size=hidden, intermediate_size=2 * hidden,
                         num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads,
                         max_position_embeddings=256, tie_word_embeddings=tied, pad_token_id=tokenizer.pad_token_id,
                         eos_token_id=tokenizer.eos_token_id, bos_token_id=None)
    torch.manual_seed(seed)
    return LlamaForCausalLM(config), tokenizer


@contextlib.contextmanager
def plugin_registry():
    """Plugins registered inside the block are gone after it (the registry is per process)."""
    from reasonlm import tasks
    saved = dict(tasks.TASKS), dict(tasks.ORIGINS), list(tasks._FILES), list(tasks._INSTALLED)
    try:
        yield
    finally:
        for live, old in zip((tasks.TASKS, tasks.ORIGINS, tasks._FILES, tasks._INSTALLED), saved):
            live.clear()
            live.update(old) if isinstance(live, dict) else live.extend(old)


class ScriptedEngine:
    """Stands in for the KVCacheEngine: the model "writes" a scripted text. `script` is one text for
    every prompt, or {question: text}, the longest question found in the decoded prompt (one question
    can be the start of another). A batch's rows are
    cut at their budget exactly as the engine cuts them (the engine's own budget handling is tested
    in test_eval_runner); a single prompt streams its tokens to `on_token`, as chat's stream does."""

    context_size = 256

    def __init__(self, tokenizer, script, model=None):
        self.tokenizer, self.script, self.model = tokenizer, script, model

    def tokens(self, prompt: list[int]) -> list[int]:
        text = self.script
        if isinstance(self.script, dict):
            decoded = self.tokenizer.decode(prompt, skip_special_tokens=True)
            text = self.script[max((q for q in self.script if q in decoded), key=len)]
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def stream(self, seed=0):
        return self

    def reseed(self, seed):
        pass

    def generate(self, prompts, params, on_token=None, rank=0, world=1):
        if prompts and isinstance(prompts[0], list):  # a batch; rows dealt to other processes are None
            budgets = params.budgets(len(prompts))
            mine = {i for b in plan_batches(prompts, budgets, params.batch_size, rank, world) for i in b}
            return [self.tokens(prompt)[:budget] if i in mine else None
                    for i, (prompt, budget) in enumerate(zip(prompts, budgets))]
        tokens = self.tokens(prompts)
        for t in tokens:
            on_token(t)
        return StreamResult(tokens=tokens, prompt_tokens=len(prompts), stopped=True)
