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
transformers DynamicCache (reasonlm/hf_decoder.py, the general path; `fast=False` forces it).

Sharding over processes: `generate(..., rank=r, world=N)` decodes only the batches dealt to
process r (`dealt_to`: back and forth over the processes, so each gets an even share of the long
prompts) and leaves the other rows None; the caller gathers them. The batches are the ones one
process decodes, and each row samples from its own seed, so N processes produce what one does.

Sampling is reproducible per row (reasonlm/sampling.py): with `seeds` the k-th token of a row is
drawn with noise that is a hash of (the row's seed, k, token id), so a row's output does not
depend on which rows share its batch.

Chat decodes one sequence at a time and streams it: `engine.stream(seed)` gives a `KVCacheStream`
(reasonlm/stream.py) that keeps its KV cache between calls and reuses the common prefix of turns.

Checker-guided search (reasonlm/search.py) decodes a line at a time: `engine.rows(prompts, budgets)`
gives a `RowSession` whose rows continue until the end of a line (or a stop), can be moved back to
an earlier length (a rejected line), extended with given tokens and forked (beams). On Llama-family
models every row keeps its own length in one preallocated cache: the prompts are prefilled once,
moving a row back is a pointer move, and a moved-back row re-feeds only its last kept token. Other
models re-prefill the rows at every call (correct, slower); `RowSession.stats` counts prefills.

A server needs rows to come and go while a batch runs: `engine.live_batch()` gives a `LiveBatch`
(continuous batching) that admits new prompts between decode steps, each prefilled on its own and
left-padded into the running cache, with its own budget, temperature, top_p and seed; `generate`
does not use it, so eval's, RL's and chat's outputs do not depend on it.

Another backend (vLLM on a GPU, say) slots in by implementing `Engine.generate` (and `stream`, for
chat) with the same arguments and the same per-row result; callers hold an `Engine` and never
touch the model.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Protocol

import torch

from reasonlm.answer import pad_token_id, stop_token_ids
from reasonlm.hf_decoder import HFDecoder, context_size, left_padded
from reasonlm.llama_decoder import LlamaDecoder
from reasonlm.sampling import SamplingParams, holds_stop, pick, pick_rows, row_keys
from reasonlm.stream import KVCacheStream, StreamResult

__all__ = ["Engine", "Stream", "KVCacheEngine", "RowSession", "Unit", "OTHERS", "LiveBatch", "LiveRow",
           "plan_batches", "dealt_to", "generate_greedily", "engine_for",
           # the engine's settings, results and sampling, defined beside it and used through it
           "SamplingParams", "StreamResult", "KVCacheStream", "context_size", "pick", "row_keys"]


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

    def rows(self, prompts: list[list[int]], budgets: list[int], top_p: float = 1.0,
             stop_strings: tuple[str, ...] = ()) -> "RowSession":
        """A RowSession on these prompts (one row each), for decoding a line at a time."""
        return RowSession(self, prompts, budgets, top_p, stop_strings)

    def live_batch(self) -> "LiveBatch":
        """A batch that rows join and leave between steps (continuous batching; the server's)."""
        return LiveBatch(self)

    def _fast_decoder(self) -> "LlamaDecoder | None":
        """The fast path's decoder for this model, or None when the general path must run it."""
        return LlamaDecoder.for_model(self.model, self.fold_lora) if self.fast else None

    def _decoder(self) -> "LlamaDecoder | HFDecoder":
        """A fresh decoder for one batch: the fast path's where it covers the model, else HFDecoder."""
        return self._fast_decoder() or HFDecoder(self.model)

    @torch.no_grad()
    def generate(self, prompts, params: SamplingParams, on_token=None, rank: int = 0,
                 world: int = 1) -> list[list[int] | None]:
        """New token ids for every prompt, in prompt order (see Engine.generate). With world > 1,
        only the batches dealt to process `rank` are decoded and every other row is None (the
        caller gathers them); rows must then sample from their own `seeds` (or greedily), so the
        result does not depend on the process count. The model decodes in eval mode (no dropout)
        and gets its training flag back afterwards."""
        n = len(prompts)
        budgets = params.budgets(n)
        if params.seeds is not None and len(params.seeds) != n:
            raise ValueError("seeds, when given, need one entry per prompt")
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
        decoder = self._decoder()
        logits = decoder.prefill(*left_padded([prompts[i] for i in idx], self.pad_id, device))
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
                        done = holds_stop(self.decode, results[i], stop_strings)
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


OTHERS = 3  # other tokens a Unit keeps per pick


@dataclass
class Unit:
    """What one row wrote in one RowSession.decode call."""
    tokens: list[int]
    logprob: float = 0.0
    """Sum of the model's log-probabilities (temperature 1) of the tokens it picked, a stop token's included."""
    end: str = "line"
    """'line' (its text now ends with a finished line), 'stop' (a stop token or stop string) or 'budget'."""
    picks: list = field(default_factory=list)
    """Per token picked (a stop token's included): (its log-probability, [(log-probability, token) of
    the model's OTHERS best other tokens, best first]): where the model was unsure, and what it would
    have written instead (search's `propose: branch`)."""


class RowSession:
    """Rows (one per prompt, ids from 0; forks get new ids) that continue a line at a time.

    decode(rows, temperatures, seeds)  continue each row until its new text holds a newline, a stop
      [, until="any"]                  token or stop string, or the row's budget is used; other rows wait
                                       (with until="any" the call returns when some row's line ends)
    rewind(row, length)                drop the row's generated tokens after the first `length`
    extend(row, tokens)                append tokens as if the row had written them (fed on the next decode)
    fork(row) -> new row               a copy of the row, cache included
    add(prompts, budgets) -> rows      new rows join the session (continuous batching)
    close(row)                         the row is finished; its cache slot is freed
    tokens(row)                        its generated tokens
    ends_line(token)                   whether the token's text holds a newline

    A row's k-th token of a line is drawn with the noise of (its seed for that line, k), so outputs do
    not depend on which rows share the batch. `stats` counts prefills, prefilled tokens
    and decode steps (what cache reuse saves is visible there, not only in time).
    """

    @torch.no_grad()
    def __init__(self, engine: KVCacheEngine, prompts: list[list[int]], budgets: list[int], top_p: float = 1.0,
                 stop_strings: tuple[str, ...] = ()):
        if engine.decode is None:
            raise ValueError("a RowSession needs the engine's decode (token ids -> text) to find line ends")
        if len(budgets) != len(prompts) or any(not p for p in prompts):
            raise ValueError("one budget per prompt, and no empty prompt")
        self.engine, self.top_p, self.stop_strings = engine, top_p, [s for s in stop_strings if s]
        self.prompts, self.budgets = [list(p) for p in prompts], list(budgets)
        self.out: list[list[int]] = [[] for _ in prompts]
        self.closed: set[int] = set()
        self.pending: dict[int, tuple] = {}  # row -> (its Unit so far, temperature, noise key, picks) mid-line
        self._newline: dict[int, bool] = {}  # token -> its text holds a newline (ends_line)
        self.stats = {"prefills": 0, "prefill_tokens": 0, "steps": 0, "row_steps": 0}
        self.device = next(engine.model.parameters()).device
        self.decoder = engine._fast_decoder()
        # tokens of a row's prompt + output in the cache: the rest (a re-fed token after a rewind,
        # tokens given by extend) is fed before the row picks again
        self.cached: dict[int, int] = {}
        if self.decoder is not None:
            self.order = list(range(len(prompts)))  # row id of every cache slot
            self.logits = self._prefill(self.decoder, self.prompts)
            self.decoder.ragged()
            self.cached = {r: len(p) for r, p in enumerate(self.prompts)}
            self.forks: dict[int, int] = {}  # a forked row -> the row it copies (materialised on _sync)

    # --- the caller's operations ---
    def tokens(self, row: int) -> list[int]:
        return self.out[row]

    @torch.no_grad()
    def add(self, prompts: list[list[int]], budgets: list[int]) -> list[int]:
        """New rows for `prompts`, joining the running ones between two decodes (continuous
        batching: a search admits problems as others finish); their row ids."""
        if len(budgets) != len(prompts) or any(not p for p in prompts):
            raise ValueError("one budget per prompt, and no empty prompt")
        rows = list(range(len(self.out), len(self.out) + len(prompts)))
        self.prompts += [list(p) for p in prompts]
        self.budgets += list(budgets)
        self.out += [[] for _ in prompts]
        if self.decoder is not None:
            self._sync()
            self.stats["prefills"] += 1
            self.stats["prefill_tokens"] += sum(map(len, prompts))
            logits = self.decoder.join(*left_padded(prompts, self.engine.pad_id, self.device)).float()
            self.logits = torch.cat([self.logits, logits])
            self.order += rows
            self.cached.update({r: len(p) for r, p in zip(rows, prompts)})
        return rows

    def fork(self, row: int) -> int:
        new = len(self.out)
        self.prompts.append(self.prompts[row])
        self.budgets.append(self.budgets[row])
        self.out.append(list(self.out[row]))
        if self.decoder is not None:
            self.forks[new] = self.forks.get(row, row)
            self.cached[new] = self.cached[row]
        return new

    def close(self, row: int) -> None:
        self.closed.add(row)
        self.pending.pop(row, None)

    @torch.no_grad()
    def rewind(self, row: int, length: int) -> None:
        """Keep the first `length` generated tokens of `row`; the next decode goes on from there."""
        if not 0 <= length <= len(self.out[row]):
            raise ValueError(f"row {row} has {len(self.out[row])} tokens, cannot rewind to {length}")
        del self.out[row][length:]
        self.pending.pop(row, None)  # a line it was writing is dropped
        if self.decoder is None:
            return
        self._sync()
        keep = min(self.cached[row], len(self.prompts[row]) + length - 1)  # the last kept token is fed
        self.decoder.rewind(self.order.index(row), self.cached[row] - keep)  # again: its logits start the line
        self.cached[row] = keep

    def extend(self, row: int, tokens: list[int]) -> None:
        self.out[row] += tokens

    @torch.no_grad()
    def decode(self, rows: list[int], temperatures: list[float], seeds: list[int],
               until: str = "all") -> dict[int, Unit]:
        """Continue every row in `rows` by one line (see the class docstring); the Units of the rows
        that ended one. until='any' returns at the first step that ends some row's line: the others
        keep their place mid-line and go on at the next call that names them (their temperature and
        seed there are not read), so no row waits for the longest line of the batch. The general
        path (no KV cache kept between calls) always runs every row to its line's end."""
        if self.decoder is None:
            return self._decode_replay(rows, temperatures, seeds)
        self._sync()
        slot = {r: i for i, r in enumerate(self.order)}
        return self._decode(self.decoder, [slot[r] for r in rows], rows, temperatures, seeds, self.logits, until)

    def ends_line(self, token: int) -> bool:
        """Whether `token`'s text holds a newline (a line ends at it: no token before it in the line
        held one, and a newline byte decodes to a newline even where the token's other bytes are
        part of a character). Remembered per token: the decode is the cost, not the test."""
        if token not in self._newline:
            self._newline[token] = "\n" in self.engine.decode([token])
        return self._newline[token]

    # --- internals ---
    def _prefill(self, decoder, prompts: list[list[int]]) -> torch.Tensor:
        self.stats["prefills"] += 1
        self.stats["prefill_tokens"] += sum(map(len, prompts))
        return decoder.prefill(*left_padded(prompts, self.engine.pad_id, self.device)).float()

    def _sync(self) -> None:
        """Materialise forks and drop closed rows from the cache when that pays (one index_select)."""
        live = [r for r in self.order if r not in self.closed] + [r for r in self.forks if r not in self.closed]
        if not self.forks and len(live) > self.decoder.keep_below * len(self.order):
            return
        slot = {r: i for i, r in enumerate(self.order)}
        sources = [slot[self.forks.get(r, r)] for r in live]
        self.decoder.keep(sources)
        self.logits = self.logits[torch.tensor(sources, device=self.logits.device)]
        self.order, self.forks = live, {}

    def _decode_replay(self, rows, temperatures, seeds) -> dict[int, Unit]:
        """The general path: prefill each row's prompt and output afresh, then decode."""
        decoder = HFDecoder(self.engine.model)
        logits = self._prefill(decoder, [self.prompts[r] + self.out[r] for r in rows])
        self.cached = {r: len(self.prompts[r]) + len(self.out[r]) for r in rows}
        return self._decode(decoder, list(range(len(rows))), rows, temperatures, seeds, logits)

    def _decode(self, decoder, slots, rows, temperatures, seeds, logits, until="all") -> dict[int, Unit]:
        engine, n_slots = self.engine, logits.shape[0]
        units, temp, keys, fed = {}, {}, {}, {}  # fed: tokens picked in this line so far (the noise's step)
        open_rows = []
        cached = self.cached
        for r, s, t, seed in zip(rows, slots, temperatures, seeds):
            if r in self.pending:
                units[r], temp[r], keys[r], fed[r] = self.pending.pop(r)
                open_rows.append((r, s))
                continue
            units[r], temp[r], keys[r], fed[r] = Unit([]), t, row_keys([seed])[0], 0
            if len(self.out[r]) >= self.budgets[r] and cached[r] == len(self.prompts[r]) + len(self.out[r]):
                units[r].end = "budget"
            else:
                open_rows.append((r, s))
        ended = len(open_rows) < len(rows)
        while open_rows and not (until == "any" and ended):
            feed = torch.full((n_slots,), engine.pad_id, dtype=torch.long, device=self.device)
            advance = [False] * n_slots
            picking = []
            for r, s in open_rows:
                plen = len(self.prompts[r])
                if cached[r] < plen + len(self.out[r]):
                    feed[s] = self.prompts[r][cached[r]] if cached[r] < plen else self.out[r][cached[r] - plen]
                    advance[s] = True
                else:
                    picking.append((r, s))
            still = [(r, s) for r, s in open_rows if (r, s) not in picking]
            for r, s, token, logp, other in self._pick(picking, logits, temp, keys, fed):
                unit = units[r]
                unit.logprob += logp
                unit.picks.append((logp, other))
                fed[r] += 1
                if token in engine.stop_ids:
                    unit.end = "stop"
                    continue
                unit.tokens.append(token)
                self.out[r].append(token)
                feed[s], advance[s] = token, True
                if holds_stop(engine.decode, self.out[r], self.stop_strings):
                    unit.end = "stop"
                elif self.ends_line(token):
                    unit.end = "line"
                elif len(self.out[r]) >= self.budgets[r]:
                    unit.end = "budget"
                else:
                    still.append((r, s))
            ended = ended or len(still) < len(open_rows)
            if any(advance):
                new = decoder.step_rows(feed, advance) if decoder is self.decoder else decoder.step(feed)
                self.stats["steps"] += 1
                self.stats["row_steps"] += sum(advance)
                moved = torch.tensor([i for i, a in enumerate(advance) if a], device=logits.device)
                logits[moved] = new[moved].float()
                for r, s in zip(rows, slots):
                    if advance[s]:
                        cached[r] += 1
            open_rows = sorted(still, key=lambda rs: rs[1])
        for r, _ in open_rows:  # mid-line: they go on at the next call
            self.pending[r] = (units.pop(r), temp[r], keys[r], fed[r])
        return units

    def _pick(self, picking, logits, temp, keys, fed):
        """(row, slot, token, its log-probability, [(log-probability, token) of the OTHERS most likely
        other tokens]) for every picking row (pick_rows: greedy rows by argmax, the others from their
        own noise at their `fed`-th draw of this call)."""
        if not picking:
            return
        rows_logits = logits[torch.tensor([s for _, s in picking], device=logits.device)]
        tokens = pick_rows(rows_logits, [temp[r] for r, _ in picking], [self.top_p] * len(picking),
                           torch.stack([keys[r] for r, _ in picking]), [fed[r] for r, _ in picking])
        logps = torch.log_softmax(rows_logits, -1)
        logp = logps.gather(-1, tokens[:, None])[:, 0]
        top_lp, top = logps.topk(min(OTHERS + 1, logps.shape[-1]), dim=-1)
        for (r, s), tok, lp, olps, os_ in zip(picking, tokens.tolist(), logp.tolist(), top_lp.tolist(), top.tolist()):
            yield r, s, tok, lp, [(olp, o) for olp, o in zip(olps, os_) if o != tok][:OTHERS]


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


def generate_greedily(prompts: list[list[int]], params: SamplingParams, continuation, stop_ids: set[int],
                      on_token=None, error: type[Exception] = ValueError, runner: str = "this runner") -> list[list[int]]:
    """Engine.generate for a greedy runner that decodes one prompt at a time (the ONNX and llama.cpp
    runners): `continuation(prompt)` yields the prompt's greedy tokens one by one and is asked for no
    more than a row needs. A row ends at a stop token (left out) or at its budget; sampling and stop
    strings are refused with `error`."""
    if params.temperature > 0 or params.stop_strings:
        raise error(f"{runner} decodes greedily (temperature 0, no stop strings)")
    results = []
    for i, (prompt, budget) in enumerate(zip(prompts, params.budgets(len(prompts)))):
        new = []
        if budget > 0:
            for token in continuation(prompt):
                if token in stop_ids:
                    break
                new.append(token)
                if on_token:
                    on_token(i, token)
                if len(new) == budget:
                    break
        results.append(new)
    return results


def engine_for(model: torch.nn.Module, tokenizer, **kwargs) -> KVCacheEngine:
    """The KVCacheEngine of `model`, with what it needs read off the tokenizer object: its pad id
    (0 without one: padding is masked), the ids that end an answer (answer.stop_token_ids) and
    `decode` for stop strings (special tokens skipped). kwargs: KVCacheEngine's (fast, fold_lora)."""
    return KVCacheEngine(model, pad_token_id(tokenizer), stop_token_ids(tokenizer),
                         decode=lambda ids: tokenizer.decode(ids, skip_special_tokens=True), **kwargs)


@dataclass
class LiveRow:
    """One sequence of a LiveBatch: its settings, the tokens it produced, where they go."""
    budget: int
    """New tokens it may still reach; set it to 0 to end the row at the next step (a cancel)."""
    temperature: float
    top_p: float
    key: torch.Tensor  # row_keys([seed])[0]: the row's own sampling noise
    on_token: Callable[[int], None] | None
    on_end: Callable[[], None] | None
    tokens: list[int] = field(default_factory=list)
    draws: int = 0  # tokens drawn so far (a stop token included): the noise index of the next draw
    done: bool = False


class LiveBatch:
    """Continuous batching: a KV-cache batch that rows join between decode steps and leave as they
    finish, so a row admitted while others decode starts at the next step (reasonlm serve).

        batch = engine.live_batch()
        row = batch.new_row(64, temperature=0, top_p=1, seed=0, on_token=print)
        batch.admit([prompt_ids], [row])
        while batch.live: batch.step()

    A row's tokens are those `generate` gives it alone with `seeds=[seed]`: its prompt is
    prefilled on its own, then it decodes with the others; rows that joined together are
    left-padded as one of generate's batches is, and greedy rows are independent of their
    neighbours as there. Each row samples with its own temperature, top_p and seed (the k-th draw
    uses row_noise(seed, k), as generate's per-row seeds do), so requests of any settings share a
    batch. Finished rows leave the cache when a row joins or when few enough rows are live
    (decoder.keep_below), and the padding columns no row needs any more are cut then, so the cache
    stays as long as its longest live row, not as long as the server has run."""

    def __init__(self, engine: "KVCacheEngine"):
        self.engine = engine
        self.device = next(engine.model.parameters()).device
        self.rows: list[LiveRow] = []  # one per cache row, finished ones included until they are dropped
        self.decoder = self.logits = None

    @property
    def live(self) -> int:
        return sum(not r.done for r in self.rows)

    @property
    def accepts_rows(self) -> bool:
        """False while a running batch's cache cannot take new rows (admit then waits for it to empty)."""
        return self.decoder is None or self.decoder.can_join()

    def admit(self, prompts: list[list[int]], rows: list[LiveRow]) -> None:
        """Prefill `prompts` together (left-padded) and add them as `rows`; their first tokens are
        drawn at the next step."""
        if not self.live:
            self.rows, self.decoder, self.logits = [], None, None
        elif self.live < len(self.rows):
            self._drop()
        if not self.accepts_rows:
            raise ValueError("this batch cannot take rows until it empties")
        if self.decoder is None:
            self.decoder = self.engine._decoder()
        logits = self.decoder.join(*left_padded(prompts, self.engine.pad_id, self.device))
        self.logits = logits if self.logits is None else torch.cat([self.logits, logits])
        self.rows += rows

    def new_row(self, budget: int, temperature: float = 0.0, top_p: float = 1.0, seed: int = 0,
                on_token=None, on_end=None) -> LiveRow:
        SamplingParams(temperature=temperature, top_p=top_p)  # the same checks as generate's settings
        return LiveRow(budget, temperature, top_p, row_keys([seed])[0], on_token, on_end)

    @torch.no_grad()
    def step(self) -> None:
        """Draw one token for every live row, then feed them (one decode step)."""
        token = torch.zeros(len(self.rows), dtype=torch.long, device=self.device)
        live = [r for r, row in enumerate(self.rows) if not row.done]
        sel = torch.tensor(live, device=self.device)
        rows = [self.rows[r] for r in live]
        if rows:
            token[sel] = pick_rows(self.logits[sel], [row.temperature for row in rows], [row.top_p for row in rows],
                                   torch.stack([row.key for row in rows]), [row.draws for row in rows])
        picked = token.tolist()
        for r, row in enumerate(self.rows):
            if row.done:
                continue
            row.draws += 1
            t = picked[r]
            stop = t in self.engine.stop_ids or len(row.tokens) >= row.budget  # budget 0: cancelled
            if not stop:
                row.tokens.append(t)
                if row.on_token:
                    row.on_token(t)
            if stop or len(row.tokens) >= row.budget:
                row.done = True
                if row.on_end:
                    row.on_end()
        if not self.live:
            self.rows, self.decoder, self.logits = [], None, None
            return
        if self.live <= self.decoder.keep_below * len(self.rows):
            token = self._drop(token)
        self.logits = self.decoder.step(token)

    def _drop(self, token: torch.Tensor | None = None):
        keep = [r for r, row in enumerate(self.rows) if not row.done]
        self.decoder.keep(keep)
        self.decoder.trim()
        sel = torch.tensor(keep, device=self.device)
        self.rows, self.logits = [self.rows[r] for r in keep], self.logits[sel]
        return None if token is None else token[sel]

    def fail(self) -> None:
        """Forget every row (after the model raised): the next admit starts a fresh batch."""
        self.rows, self.decoder, self.logits = [], None, None
