"""Sampling settings and reproducible per-row draws: the engine's (and its sessions') one way to
pick the next token.

With per-row seeds the k-th token of a row is drawn with noise that is a hash of (the row's seed,
k, token id) (`row_noise`), so a row's output does not depend on which rows share its batch
(batching, sharding and resuming never change a sample), and a whole batch is drawn in a few
tensor operations rather than one generator call per row. Greedy (temperature 0) needs no seed.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch


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

    def budgets(self, n: int) -> list[int]:
        """The budget of each of `n` prompts (max_new_tokens, one for all or one per prompt)."""
        budgets = self.max_new_tokens if isinstance(self.max_new_tokens, list) else [self.max_new_tokens] * n
        if len(budgets) != n:
            raise ValueError("max_new_tokens, when a list, needs one entry per prompt")
        return budgets


def pick(logits: torch.Tensor, temperature: float, top_p: float, gen, step: int | torch.Tensor = 0) -> torch.Tensor:
    """Next token per row: argmax, or a (nucleus) sample, from one shared torch.Generator or, when
    `gen` is a row_keys tensor, from each row's own noise for its `step`-th token (Gumbel-max:
    argmax(log p + Gumbel noise) is an exact draw from p). `step` may be one index per row
    (LiveBatch: rows that joined at different steps)."""
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


def pick_rows(logits: torch.Tensor, temperatures: list[float], top_ps: list[float], keys: torch.Tensor,
              steps: list[int]) -> torch.Tensor:
    """Next token per row, each row with its own temperature, top_p and noise (row r draws its
    `steps[r]`-th token of its key, as `pick` does): rows that share (temperature, top_p) are drawn
    in one call, greedy ones by argmax. `keys` is [rows, 2] (row_keys), on the CPU as row_keys makes it."""
    token = torch.zeros(len(temperatures), dtype=torch.long, device=logits.device)
    groups: dict[tuple, list[int]] = {}
    for r, settings in enumerate(zip(temperatures, top_ps)):
        groups.setdefault(settings, []).append(r)
    for (temperature, top_p), members in groups.items():
        sel = torch.tensor(members, device=logits.device)
        if temperature <= 0:  # greedy: no noise to build
            token[sel] = pick(logits[sel], temperature, top_p, None)
        else:
            token[sel] = pick(logits[sel], temperature, top_p, keys[torch.tensor(members)],
                              step=torch.tensor([steps[r] for r in members]))
    return token


def holds_stop(decode: Callable[[list[int]], str], tokens: list[int], stop_strings) -> bool:
    """Whether the decoded tail of `tokens` holds one of `stop_strings`: the tail is the last
    4 tokens per character of the longest stop string, plus 4 (enough tokens to spell any of them)."""
    if not stop_strings:
        return False
    tail = decode(tokens[-(4 * max(map(len, stop_strings)) + 4):])
    return any(s in tail for s in stop_strings)


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


def row_noise(keys: torch.Tensor, step: int | torch.Tensor, vocab: int) -> torch.Tensor:
    """[rows, vocab] uniforms in (0, 1): a hash of (row key, step, token id), the same for a row
    whichever rows share its batch."""
    per_row = mix32((keys[:, 0] + mix32(keys[:, 1] ^ step)) & MASK32)
    token = torch.arange(vocab, device=keys.device)
    bits = mix32(mix32(per_row[:, None] ^ token[None, :]) ^ keys[:, 1:2])
    return (bits.double() + 0.5) / 2.0 ** 32
