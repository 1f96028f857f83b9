"""The generation engine: token ids in, token ids out. Eval, chat, training's periodic check and RL
all sample through it; it knows nothing about tokenizers, prompts, tasks or stages.

    engine = Engine(model, pad_id=tok.pad_token_id, stop_ids={eos, end_of_turn})
    outs = engine.generate(prompt_ids, SamplingParams(max_new_tokens=[96, 160], temperature=0.6, seeds=[1, 2]))

How a batch runs (KVCacheEngine, any `transformers` causal LM): prompts are sorted by length and
cut into batches of `batch_size`; each batch is left-padded so every prompt's last token sits at
the end, prefilled once with a KV cache, then decoded one token per step for every live row. A
row leaves the batch (and the cache) as soon as it emits a stop token, its decoded tail holds a
stop string, or it reaches its own budget, so long answers never make short ones wait.

Sampling is reproducible per row: with `seeds` every row samples from its own torch.Generator,
so a row's output does not depend on which rows share its batch (batching, sharding and
resuming never change a sample). Greedy (temperature 0) needs no seed.

Another backend (vLLM on a GPU, say) slots in by implementing `Engine.generate` with the same
arguments and the same per-row result; callers hold an `Engine` and never touch the model.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Protocol

import torch
from transformers import DynamicCache


@dataclass(frozen=True)
class SamplingParams:
    """How to continue a batch of prompts."""
    max_new_tokens: int | list[int] = 256
    """Budget of new tokens: one for every prompt, or a list with one per prompt."""
    temperature: float = 0.0
    """0 = greedy (argmax); > 0 samples from softmax(logits / temperature)."""
    top_p: float = 1.0
    """Nucleus sampling mass (1 = the whole distribution)."""
    seed: int = 0
    """Seed of the one stream shared by all rows when `seeds` is not given."""
    seeds: list[int] | None = None
    """One seed per prompt: every row samples from its own stream (reproducible under any batching)."""
    stop_strings: tuple[str, ...] = ()
    """A row also stops once its decoded tail contains one of these (needs the engine's `decode`);
    the string's tokens stay in the output: cut the text with answer.cut_at_stop."""
    batch_size: int = 64
    """Rows decoded together."""

    def __post_init__(self):
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")


class Engine(Protocol):
    """What every backend provides: new token ids for every prompt, in prompt order."""

    def generate(self, prompts: list[list[int]], params: SamplingParams,
                 on_token: Callable[[int, int], None] | None = None) -> list[list[int]]:
        """Continue each prompt; `on_token(prompt_index, token_id)` streams tokens as they come.
        The stop token that ended a row is not in its output."""
        ...


@dataclass
class KVCacheEngine:
    """Batched KV-cache sampling on a `transformers` causal LM (the default backend)."""
    model: torch.nn.Module
    pad_id: int
    stop_ids: set[int] = field(default_factory=set)
    decode: Callable[[list[int]], str] | None = None  # token ids -> text, for stop strings only

    @torch.no_grad()
    def generate(self, prompts, params: SamplingParams, on_token=None) -> list[list[int]]:
        n = len(prompts)
        budgets = params.max_new_tokens if isinstance(params.max_new_tokens, list) else [params.max_new_tokens] * n
        if len(budgets) != n or (params.seeds is not None and len(params.seeds) != n):
            raise ValueError("max_new_tokens and seeds, when lists, need one entry per prompt")
        stop_strings = [s for s in params.stop_strings if s]
        if stop_strings and self.decode is None:
            raise ValueError("stop_strings need the engine's decode (token ids -> text)")
        results: list[list[int]] = [[] for _ in range(n)]
        order = sorted(range(n), key=lambda i: len(prompts[i]))  # similar lengths share a batch
        shared = torch.Generator().manual_seed(params.seed)
        for start in range(0, n, params.batch_size):
            idx = order[start:start + params.batch_size]
            gens = ([torch.Generator().manual_seed(params.seeds[i]) for i in idx]
                    if params.seeds is not None and params.temperature > 0 else shared)
            self._run_batch(prompts, idx, budgets, params, gens, stop_strings, results, on_token)
        return results

    def _run_batch(self, prompts, idx, budgets, params, gens, stop_strings, results, on_token):
        model, device = self.model, next(self.model.parameters()).device
        window = 4 * max(map(len, stop_strings)) + 4 if stop_strings else 0  # tokens that can hold a stop string
        width = max(len(prompts[i]) for i in idx)
        ids = torch.full((len(idx), width), self.pad_id, dtype=torch.long, device=device)
        mask = torch.zeros((len(idx), width), dtype=torch.long, device=device)
        for r, i in enumerate(idx):  # left padding keeps every prompt's last token at the end
            ids[r, width - len(prompts[i]):] = torch.tensor(prompts[i])
            mask[r, width - len(prompts[i]):] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        cache = DynamicCache()
        alive = list(range(len(idx)))  # rows of the current batch -> positions in idx
        # logits_to_keep=1: only the last position's logits (a 150k vocab x long prompts is GBs otherwise)
        out = model(input_ids=ids, attention_mask=mask, position_ids=positions, past_key_values=cache, use_cache=True,
                    logits_to_keep=1)
        logits = out.logits[:, -1]
        last_pos = positions[:, -1]
        steps = 0
        while alive:
            token = pick(logits, params.temperature, params.top_p, gens)
            steps += 1
            keep = []
            for r, t in enumerate(token.tolist()):
                i = idx[alive[r]]
                done = t in self.stop_ids
                if not done:
                    results[i].append(t)
                    if on_token:
                        on_token(i, t)
                    if stop_strings:
                        tail = self.decode(results[i][-window:])
                        done = any(s in tail for s in stop_strings)
                if not (done or steps >= budgets[i]):
                    keep.append(r)
            if not keep:
                break
            if len(keep) < len(alive):  # early exit: drop finished rows from the batch and cache
                sel = torch.tensor(keep, device=device)
                cache.batch_select_indices(sel)
                mask, token, last_pos = mask[sel], token[sel], last_pos[sel]
                alive = [alive[r] for r in keep]
                if isinstance(gens, list):
                    gens = [gens[r] for r in keep]
            mask = torch.cat([mask, torch.ones((len(alive), 1), dtype=mask.dtype, device=device)], dim=1)
            last_pos = last_pos + 1
            out = model(input_ids=token[:, None], attention_mask=mask, position_ids=last_pos[:, None],
                        past_key_values=cache, use_cache=True)
            logits = out.logits[:, -1]


def pick(logits: torch.Tensor, temperature: float, top_p: float, gen) -> torch.Tensor:
    """Next token per row: argmax, or a (nucleus) sample from one shared generator or one per row."""
    if temperature <= 0:
        return logits.argmax(-1)
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p < 1.0:
        sorted_p, sorted_i = probs.sort(dim=-1, descending=True)
        keep = sorted_p.cumsum(-1) - sorted_p < top_p
        sorted_p = sorted_p * keep
        probs = torch.zeros_like(probs).scatter(-1, sorted_i, sorted_p)
    if isinstance(gen, list):
        return torch.cat([torch.multinomial(probs[r], 1, generator=g) for r, g in enumerate(gen)])
    return torch.multinomial(probs, 1, generator=gen).squeeze(-1)
