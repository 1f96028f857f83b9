"""The general decode path: any `transformers` causal LM's own forward per token on a DynamicCache
(what reasonlm/llama_decoder.py does faster for the Llama family, with the same interface:
prefill, step, join, keep, trim), and the left-padded batch both decoders prefill.
"""
from __future__ import annotations

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from reasonlm.llama_decoder import pad_left


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

    def join(self, ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """LlamaDecoder.join on a DynamicCache: new rows prefilled on their own, appended left-padded."""
        if self.mask is None:
            return self.prefill(ids, mask, positions)
        if not self.can_join():
            raise ValueError("this model's cache cannot take rows mid-batch")
        new = HFDecoder(self.model)
        logits = new.prefill(ids, mask, positions)
        width = max(self.mask.shape[1], new.mask.shape[1])
        for mine, theirs in zip(self.cache.layers, new.cache.layers):
            mine.keys, mine.values = (torch.cat([pad_left(a, width - a.shape[2]), pad_left(b, width - b.shape[2])])
                                      for a, b in ((mine.keys, theirs.keys), (mine.values, theirs.values)))
        self.mask = torch.cat([pad_left(m, width - m.shape[1]) for m in (self.mask, new.mask)])
        self.last_pos = torch.cat([self.last_pos, new.last_pos])
        return logits

    def can_join(self) -> bool:
        """Rows can join only a cache of plain full-attention layers (a sliding window cannot be padded)."""
        return all(type(layer) is DynamicLayer for layer in self.cache.layers)

    def trim(self) -> None:
        """Drop the leading cache columns that are padding in every row."""
        used = self.mask.any(0).nonzero()
        cut = int(used[0]) if len(used) else 0
        if cut and self.can_join():
            for layer in self.cache.layers:
                layer.keys, layer.values = layer.keys[:, :, cut:], layer.values[:, :, cut:]
            self.mask = self.mask[:, cut:]

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        self.mask = torch.cat([self.mask, self.mask.new_ones((len(tokens), 1))], dim=1)
        self.last_pos = self.last_pos + 1
        out = self.model(input_ids=tokens[:, None], attention_mask=self.mask, position_ids=self.last_pos[:, None],
                         cache=self.cache, use_cache=True)
        return out.logits[:, -1]


def left_padded(prompts: list[list[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(ids, attention mask, position ids) of `prompts` as one batch, left-padded with `pad_id` so
    every prompt's last token sits at the end (what a decoder's prefill and join take)."""
    width = max(map(len, prompts))
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long, device=device)
    mask = torch.zeros((len(prompts), width), dtype=torch.long, device=device)
    for r, p in enumerate(prompts):
        ids[r, width - len(p):] = torch.tensor(p)
        mask[r, width - len(p):] = 1
    return ids, mask, (mask.cumsum(-1) - 1).clamp(min=0)


def context_size(model: torch.nn.Module) -> int | None:
    """Tokens a `transformers` model can attend to (prompt + answer), when its config says."""
    n = getattr(model.config, "max_position_embeddings", None)
    return n if isinstance(n, int) and n > 0 else None
