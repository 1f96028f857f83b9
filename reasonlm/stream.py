"""Chat's decoder: one sequence at a time, streamed. Turn n+1's prompt starts with turn n's prompt
and answer, so only the tokens after the longest common prefix are fed ("prefix reuse"); the rest
of the cache is cropped away.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from transformers import DynamicCache

from reasonlm.sampling import SamplingParams, pick


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
