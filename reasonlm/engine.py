"""The generation engine: token ids in, token ids out. Eval, chat, training's periodic check and RL
all sample through it; it knows nothing about tokenizers, prompts, tasks or stages.

    engine = engine_for(model, tokenizer)      # pad id, stop ids and decode read off the tokenizer object
    outs = engine.generate(prompt_ids, SamplingParams(max_new_tokens=[96, 160], temperature=0.6, seeds=[1, 2]))

How a batch runs (KVCacheEngine, any `transformers` causal LM): prompts are sorted by length (then
budget) and cut into batches of `batch_size` (`plan_batches`, the one place that decides which rows
share a batch: eval and training's check plan theirs with it too); each batch is left-padded so every prompt's last token sits at
the end, prefilled once with a KV cache, then decoded one token per step for every live row. A
row leaves the batch (and the cache) as soon as it emits a stop token, its decoded tail holds a
stop string, or it reaches its own budget, so long answers never make short ones wait.

Two decoders run the steps, with the same outputs: Llama-family models (Llama, SmolLM2, Qwen2;
decided from the model class, see reasonlm/llama_decoder.py) decode on a preallocated KV cache
with the layers' arithmetic called directly, bitwise what the model's forward computes but
without its per-token overhead; every other causal LM runs its own forward per token on a
transformers DynamicCache (HFDecoder, the general path; `fast=False` forces it).

Sharding over processes: `generate(..., rank=r, world=N)` decodes only the batches dealt to
process r (`dealt_to`: back and forth over the processes, so each gets an even share of the long
prompts) and leaves the other rows None; the caller gathers them. The batches are the ones one
process decodes, and each row samples from its own seed, so N processes produce what one does.

Sampling is reproducible per row: with `seeds` the k-th token of a row is drawn with noise that
is a hash of (the row's seed, k, token id) (`row_noise`), so a row's output does not depend on
which rows share its batch (batching, sharding and resuming never change a sample), and a whole
batch is drawn in a few tensor operations rather than one generator call per row. Greedy
(temperature 0) needs no seed.

Chat decodes one sequence at a time and streams it: `engine.stream(seed)` gives a `KVCacheStream`
that keeps its KV cache between calls. Turn n+1's prompt starts with turn n's prompt and answer,
so only the tokens after the longest common prefix are fed ("prefix reuse"); the rest of the
cache is cropped away.

Another backend (vLLM on a GPU, say) slots in by implementing `Engine.generate` (and `stream`, for
chat) with the same arguments and the same per-row result; callers hold an `Engine` and never
touch the model.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Protocol

import time

import torch
from transformers import DynamicCache

from reasonlm.answer import stop_token_ids
from reasonlm.llama_decoder import LlamaDecoder


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

    def stream(self, seed: int = 0) -> "Stream":
        """A single-sequence decoder that keeps its cache between calls (chat)."""
        ...


@dataclass
class StreamResult:
    """One streamed continuation and what it took."""
    tokens: list[int]
    prompt_tokens: int = 0
    reused_tokens: int = 0  # prompt tokens whose keys/values came from the previous call's cache
    first_token_s: float = 0.0  # time to first token (includes feeding the prompt)
    total_s: float = 0.0
    stopped: bool = False  # ended by a stop token (not by the token budget)

    @property
    def tokens_per_s(self) -> float:
        """Decode speed: tokens after the first, over the time after the first."""
        decode_s = self.total_s - self.first_token_s
        return (len(self.tokens) - 1) / decode_s if len(self.tokens) > 1 and decode_s > 0 else 0.0


class Stream(Protocol):
    def generate(self, prompt: list[int], params: SamplingParams,
                 on_token: Callable[[int], None] | None = None) -> StreamResult:
        """Continue one prompt, streaming every token to `on_token`; the sampling stream is the
        stream's own (seeded by `reseed`), so params.seed and params.seeds are not read."""
        ...

    def reseed(self, seed: int) -> None:
        ...


@dataclass
class KVCacheEngine:
    """Batched KV-cache sampling on a `transformers` causal LM (the default backend)."""
    model: torch.nn.Module
    pad_id: int
    stop_ids: set[int] = field(default_factory=set)
    decode: Callable[[list[int]], str] | None = None  # token ids -> text, for stop strings only
    fast: bool = True
    """Decode Llama-family models with reasonlm.llama_decoder (same outputs, several times faster);
    False forces the general path (the model's own forward per token), e.g. to compare the two."""
    fold_lora: bool = False
    """On the fast path, decode with LoRA folded into the weights and q/k/v, gate/up fused (see
    LlamaDecoder.for_model): fewer matmuls per token, outputs equal up to float rounding only.
    RL's sampler sets it; eval and chat keep outputs identical to the model's own forward."""

    @property
    def context_size(self) -> int | None:
        """Tokens the model can attend to (prompt + answer), when its config says."""
        return context_size(self.model)

    def stream(self, seed: int = 0) -> KVCacheStream:
        return KVCacheStream(self.model, self.stop_ids, seed)

    @torch.no_grad()
    def generate(self, prompts, params: SamplingParams, on_token=None, rank: int = 0,
                 world: int = 1) -> list[list[int] | None]:
        """New token ids for every prompt, in prompt order (see Engine.generate). With world > 1,
        only the batches dealt to process `rank` are decoded and every other row is None (the
        caller gathers them); rows must then sample from their own `seeds` (or greedily), so the
        result does not depend on the process count. The model decodes in eval mode (no dropout)
        and gets its training flag back afterwards."""
        n = len(prompts)
        budgets = params.max_new_tokens if isinstance(params.max_new_tokens, list) else [params.max_new_tokens] * n
        if len(budgets) != n or (params.seeds is not None and len(params.seeds) != n):
            raise ValueError("max_new_tokens and seeds, when lists, need one entry per prompt")
        if not 0 <= rank < world:
            raise ValueError(f"rank must be in 0..world-1, got rank {rank} of world {world}")
        if world > 1 and params.temperature > 0 and params.seeds is None:
            raise ValueError("sampling sharded over processes needs per-row seeds (SamplingParams.seeds)")
        stop_strings = [s for s in params.stop_strings if s]
        if stop_strings and self.decode is None:
            raise ValueError("stop_strings need the engine's decode (token ids -> text)")
        results: list[list[int] | None] = [[] for _ in range(n)] if world == 1 else [None] * n
        shared = torch.Generator().manual_seed(params.seed)
        was_training = self.model.training
        self.model.eval()
        try:
            for idx in plan_batches(prompts, budgets, params.batch_size, rank, world):
                for i in idx:
                    results[i] = []
                gens = (row_keys([params.seeds[i] for i in idx])
                        if params.seeds is not None and params.temperature > 0 else shared)
                self._run_batch(prompts, idx, budgets, params, gens, stop_strings, results, on_token)
        finally:
            self.model.train(was_training)
        return results

    def _run_batch(self, prompts, idx, budgets, params, gens, stop_strings, results, on_token):
        device = next(self.model.parameters()).device
        window = 4 * max(map(len, stop_strings)) + 4 if stop_strings else 0  # tokens that can hold a stop string
        width = max(len(prompts[i]) for i in idx)
        ids = torch.full((len(idx), width), self.pad_id, dtype=torch.long, device=device)
        mask = torch.zeros((len(idx), width), dtype=torch.long, device=device)
        for r, i in enumerate(idx):  # left padding keeps every prompt's last token at the end
            ids[r, width - len(prompts[i]):] = torch.tensor(prompts[i])
            mask[r, width - len(prompts[i]):] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        decoder = (LlamaDecoder.for_model(self.model, self.fold_lora) if self.fast else None) or HFDecoder(self.model)
        logits = decoder.prefill(ids, mask, positions)
        # rows[r]: the problem (position in idx) in cache row r, None once it finished; a finished row
        # keeps being decoded (its tokens ignored) until few enough rows live to make dropping pay
        rows: list[int | None] = list(range(len(idx)))
        live = len(rows)
        per_row = isinstance(gens, torch.Tensor)
        steps = 0
        while True:
            live_rows = [r for r, p in enumerate(rows) if p is not None] if live < len(rows) else range(len(rows))
            if live < len(rows) and params.temperature > 0 and not per_row:  # the shared stream draws for live rows only
                sel = torch.tensor(live_rows, device=device)
                token = torch.zeros(len(rows), dtype=torch.long, device=device)
                token[sel] = pick(logits[sel], params.temperature, params.top_p, gens)
            else:  # per-row noise depends on (seed, step) alone: a finished row's draw changes nothing
                token = pick(logits, params.temperature, params.top_p, gens, step=steps)
            steps += 1
            picked = token.tolist()
            for r in live_rows:
                t, i = picked[r], idx[rows[r]]
                done = t in self.stop_ids
                if not done:
                    results[i].append(t)
                    if on_token:
                        on_token(i, t)
                    if stop_strings:
                        tail = self.decode(results[i][-window:])
                        done = any(s in tail for s in stop_strings)
                if done or steps >= budgets[i]:
                    rows[r] = None
                    live -= 1
            if not live:
                break
            if live <= decoder.keep_below * len(rows):  # drop finished rows from the batch and the cache
                keep = [r for r, p in enumerate(rows) if p is not None]
                decoder.keep(keep)
                token = token[torch.tensor(keep, device=device)]
                rows = [rows[r] for r in keep]
                if per_row:
                    gens = gens[torch.tensor(keep)]
            logits = decoder.step(token)


def plan_batches(prompts: list[list[int]], budgets: list[int], batch_size: int, rank: int = 0,
                 world: int = 1) -> list[list[int]]:
    """Which prompts (by index) decode together: sorted by prompt length, then budget, then index
    (similar lengths share a batch and its padding), cut every `batch_size`; of those, the
    batches dealt to process `rank` of `world` (dealt_to). The same batches for any `world`."""
    order = sorted(range(len(prompts)), key=lambda i: (len(prompts[i]), budgets[i], i))
    batches = [order[s:s + batch_size] for s in range(0, len(order), max(1, batch_size))]
    return [b for k, b in enumerate(batches) if dealt_to(k, world) == rank]


def dealt_to(batch: int, world: int) -> int:
    """The process that decodes batch `batch` (of prompts sorted by length): 0..world-1, then back
    world-1..0. A longer prompt is a longer chain to sample, so dealing round-robin would give the
    last process the longest batch of every pass; back and forth evens out the processes' work."""
    lap, k = divmod(batch, world)
    return k if lap % 2 == 0 else world - 1 - k


def engine_for(model: torch.nn.Module, tokenizer, **kwargs) -> KVCacheEngine:
    """The KVCacheEngine of `model`, with what it needs read off the tokenizer object: its pad id
    (0 without one: padding is masked), the ids that end an answer (answer.stop_token_ids) and
    `decode` for stop strings (special tokens skipped). kwargs: KVCacheEngine's (fast, fold_lora)."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    return KVCacheEngine(model, pad, stop_token_ids(tokenizer),
                         decode=lambda ids: tokenizer.decode(ids, skip_special_tokens=True), **kwargs)


class HFDecoder:
    """The general path: the model's own forward per token on a transformers DynamicCache (any
    causal LM transformers can cache)."""
    keep_below = 1.0  # drop a finished row at once: the cache's batch_select is cheaper than its step

    def __init__(self, model: torch.nn.Module):
        self.model = model
        self.cache = DynamicCache()
        self.mask = self.last_pos = None

    def prefill(self, ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        # logits_to_keep=1: only the last position's logits (a 150k vocab x long prompts is GBs otherwise).
        # `cache=` is the forward's name for the KV cache since transformers 5.24 (`past_key_values`
        # warns and goes in 5.40); pyproject.toml requires transformers >= 5.24 for it.
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, cache=self.cache,
                         use_cache=True, logits_to_keep=1)
        self.mask, self.last_pos = mask, positions[:, -1]
        return out.logits[:, -1]

    def keep(self, rows: list[int]) -> None:
        sel = torch.tensor(rows, device=self.mask.device)
        self.cache.batch_select_indices(sel)
        self.mask, self.last_pos = self.mask[sel], self.last_pos[sel]

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        self.mask = torch.cat([self.mask, self.mask.new_ones((len(tokens), 1))], dim=1)
        self.last_pos = self.last_pos + 1
        out = self.model(input_ids=tokens[:, None], attention_mask=self.mask, position_ids=self.last_pos[:, None],
                         cache=self.cache, use_cache=True)
        return out.logits[:, -1]


class KVCacheStream:
    """One sequence at a time, streamed, with prefix reuse of the KV cache across calls."""

    def __init__(self, model: torch.nn.Module, stop_ids: set[int], seed: int = 0):
        self.model, self.stop_ids = model, stop_ids
        self.rng = torch.Generator().manual_seed(seed)
        self.cache, self.cached = None, []  # cached: the token ids whose keys/values are in cache

    def reseed(self, seed: int) -> None:
        self.rng.manual_seed(seed)

    @torch.no_grad()
    def generate(self, prompt: list[int], params: SamplingParams, on_token=None) -> StreamResult:
        reuse = 0
        while reuse < min(len(self.cached), len(prompt) - 1) and self.cached[reuse] == prompt[reuse]:
            reuse += 1  # keep >= 1 prompt token to feed: its logits give the first new token
        cache = self.cache if reuse else None
        if cache is not None and len(self.cached) > reuse:
            try:  # crop(-k) drops the last k positions (transformers 4.x and 5.x agree on negatives)
                cache.crop(reuse - len(self.cached))
            except (RuntimeError, ValueError):  # e.g. a sliding-window layer that cannot roll back
                cache = None
        if cache is None:
            cache, reuse = DynamicCache(), 0
        # Until this call returns the cache is mid-update; a Ctrl-C then leaves no cache behind.
        self.cache, self.cached = None, []
        result = StreamResult(tokens=[], prompt_tokens=len(prompt), reused_tokens=reuse)
        fed, feed = list(prompt[:reuse]), list(prompt[reuse:])
        t0 = time.perf_counter()
        while True:
            positions = torch.arange(len(fed), len(fed) + len(feed))[None]
            out = self.model(input_ids=torch.tensor([feed]), position_ids=positions, cache=cache,
                             use_cache=True, logits_to_keep=1)  # no vocab-sized logits for every prompt token
            fed += feed
            token = int(pick(out.logits[:, -1], params.temperature, params.top_p, self.rng)[0])
            if not result.first_token_s:
                result.first_token_s = time.perf_counter() - t0
            if token in self.stop_ids:
                result.stopped = True
                break
            result.tokens.append(token)
            if on_token:
                on_token(token)
            if len(result.tokens) >= params.max_new_tokens:
                break
            feed = [token]
        result.total_s = time.perf_counter() - t0
        self.cache, self.cached = cache, fed
        return result


def context_size(model: torch.nn.Module) -> int | None:
    """Tokens a `transformers` model can attend to (prompt + answer), when its config says."""
    n = getattr(model.config, "max_position_embeddings", None)
    return n if isinstance(n, int) and n > 0 else None


def pick(logits: torch.Tensor, temperature: float, top_p: float, gen, step: int = 0) -> torch.Tensor:
    """Next token per row: argmax, or a (nucleus) sample, from one shared torch.Generator or, when
    `gen` is a row_keys tensor, from each row's own noise for its `step`-th token (Gumbel-max:
    argmax(log p + Gumbel noise) is an exact draw from p)."""
    if temperature <= 0:
        return logits.argmax(-1)
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p < 1.0:
        sorted_p, sorted_i = probs.sort(dim=-1, descending=True)
        keep = sorted_p.cumsum(-1) - sorted_p < top_p
        sorted_p = sorted_p * keep
        probs = torch.zeros_like(probs).scatter(-1, sorted_i, sorted_p)
    if isinstance(gen, torch.Tensor):
        u = row_noise(gen, step, probs.shape[-1])
        return (probs.double().log() - (-u.log()).log()).argmax(-1)  # log 0 = -inf: never drawn
    return torch.multinomial(probs, 1, generator=gen).squeeze(-1)


MASK32 = 0xFFFFFFFF


def row_keys(seeds: list[int]) -> torch.Tensor:
    """[rows, 2] 32-bit keys of the rows' seeds (splitmix64, so nearby seeds share nothing)."""
    keys = []
    for seed in seeds:
        z = (seed + 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
        z ^= z >> 31
        keys.append((z & MASK32, z >> 32))
    return torch.tensor(keys, dtype=torch.long)


def mix32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer hash (lowbias32) on int64 tensors holding values below 2**32; a product's
    low 32 bits are exact even where the int64 product wraps."""
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & MASK32
    x = x ^ (x >> 15)
    x = (x * 0x846CA68B) & MASK32
    return x ^ (x >> 16)


def row_noise(keys: torch.Tensor, step: int, vocab: int) -> torch.Tensor:
    """[rows, vocab] uniforms in (0, 1): a hash of (row key, step, token id), the same for a row
    whichever rows share its batch."""
    per_row = mix32((keys[:, 0] + mix32(keys[:, 1] ^ step)) & MASK32)
    token = torch.arange(vocab, device=keys.device)
    bits = mix32(mix32(per_row[:, None] ^ token[None, :]) ^ keys[:, 1:2])
    return (bits.double() + 0.5) / 2.0 ** 32
