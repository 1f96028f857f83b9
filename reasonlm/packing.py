"""Packing: many examples to a row of `seq_len` tokens, and attention that keeps them apart.

pack() first-fits shuffled examples into rows; collate() turns rows into tensors whose position
ids restart at every example; with packed attention the examples run back to back without
padding and `packed_attention_forward` attends within each example only. The training stage
(train.py) uses all of it; nothing here knows about datasets, tokenizers or the loop.
"""
from __future__ import annotations

import random

import torch
import torch.nn.functional as F
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

IGNORE = -100  # label of a token that carries no loss (prompt and padding)

# transformers' layer_types whose layers carry a state from token to token (recurrent / linear
# attention, short convolutions, attention+state hybrids): they never read position ids or the
# attention mask, so an example packed after another one would see it.
STATEFUL_LAYERS = ("linear_attention", "hybrid", "hybrid_sliding", "conv")


class PackingError(ValueError):
    """A model that packed rows cannot keep examples apart for, reported as one line."""


def check_packable(config) -> None:
    """Refuse a model with stateful layers: packing separates examples only by position-id resets
    (or a mask, or packed attention), which those layers ignore (e.g. Qwen3-Next's Gated DeltaNet,
    Mamba, Jamba, LFM2's convolutions)."""
    # most configs (Llama, Qwen2) have no layer_types at all: every layer is plain attention
    stateful = sorted({t for t in (getattr(config, "layer_types", None) or []) if t in STATEFUL_LAYERS})
    if stateful:
        raise PackingError(f"{config.model_type} has {', '.join(stateful)} layers (config.layer_types), which carry "
                           f"state across the packed examples of a row and ignore the position-id resets that keep "
                           f"them apart; reasonlm packs every training row, so it cannot train this model correctly")


def pack(examples, seq_len: int, seed: int, open_bins: int = 8):
    """Shuffle, then first-fit examples into rows of at most seq_len tokens.

    Returns a list of rows; a row is a list of example indices. Keeping a few bins open fills
    rows almost full with short examples while keeping the order random.
    """
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    rows, bins = [], []  # bins: [used, [indices]]
    for i in order:
        n = len(examples[i][0])
        for b in bins:
            if b[0] + n <= seq_len:
                b[0] += n
                b[1].append(i)
                break
        else:
            bins.append([n, [i]])
            if len(bins) > open_bins:
                rows.append(bins.pop(0)[1])
    rows.extend(b[1] for b in bins)
    return rows


def collate(examples, row_indices, seq_len: int, pad_id: int, jitter: int = 0, generator=None,
            line_break_id: int | None = None, packed_attention: bool = False):
    """Tensors for packed rows: input_ids, labels, position_ids (reset at each example), and
    what keeps examples apart in attention: None (transformers reads the position-id resets),
    a block-diagonal mask (position jitter), or with `packed_attention` a `PackedRows` layout
    for `packed_attention_forward`, which needs neither; the tensors are then (1, tokens): every
    example of the rows back to back, without the padding.

    Without jitter, transformers reads example boundaries from the position-id resets. With
    jitter, each example's completion starts a random 0..jitter positions after its prompt
    ends, so the model cannot find question tokens by their exact distance and has to use
    what they say; inference uses a shift of 0, one of the trained values. The jump in
    position ids would read as an example boundary, so boundaries are then passed as an
    explicit block-diagonal causal mask (True = may attend). With `line_break_id`, every line
    break of the completion adds a fresh 0..jitter shift too, so a step cannot find its operand
    by counting positions from the start of the answer either.
    """
    n = len(row_indices)
    input_ids = torch.full((n, seq_len), pad_id, dtype=torch.long)
    labels = torch.full((n, seq_len), IGNORE, dtype=torch.long)
    position_ids = torch.zeros((n, seq_len), dtype=torch.long)
    segment = torch.zeros((n, seq_len), dtype=torch.long)
    lengths = []  # of every example, in row order
    for r, idxs in enumerate(row_indices):
        t = 0
        for s, i in enumerate(idxs):
            ids, lab = examples[i]
            input_ids[r, t:t + len(ids)] = torch.tensor(ids)
            labels[r, t:t + len(ids)] = torch.tensor(lab)
            pos = torch.arange(len(ids))
            if jitter:
                start = next((k for k, x in enumerate(lab) if x != IGNORE), len(ids))
                pos[start:] += int(torch.randint(0, jitter + 1, (1,), generator=generator))
                if line_break_id is not None:
                    for k in range(start, len(ids) - 1):
                        if ids[k] == line_break_id:
                            pos[k + 1:] += int(torch.randint(0, jitter + 1, (1,), generator=generator))
            position_ids[r, t:t + len(ids)] = pos
            segment[r, t:t + len(ids)] = s + 1
            lengths.append(len(ids))
            t += len(ids)
        position_ids[r, t:] = torch.arange(seq_len - t)  # padding is its own segment, no loss
    if packed_attention:
        # One flat row of the examples alone, padding dropped: packed attention keeps them apart,
        # so no compute is spent on pad tokens. The last token of an example now predicts the
        # first token of the next one, whose label is IGNORE (it is the prompt's first token),
        # as in a padded row.
        real = segment.reshape(-1) > 0
        flat = [x.reshape(-1)[real][None] for x in (input_ids, labels, position_ids)]
        return (*flat, PackedRows.from_lengths(lengths))
    mask = None
    if jitter:
        causal = torch.ones(seq_len, seq_len, dtype=torch.bool).tril()
        mask = ((segment[:, :, None] == segment[:, None, :]) & causal)[:, None]
    return input_ids, labels, position_ids, mask


# --- attention over packed rows ----------------------------------------------------------------
# A packed row of 192 tokens holds several examples of 25-150 tokens. SDPA with a block-diagonal
# mask computes all 192x192 scores of every head and masks most of them away; on a CPU its flash
# kernel is also slow for small heads (16 dims in the tiny model). This is the variable-length
# path instead, for any device: gather the examples of a batch into groups of equal padded
# length (a multiple of BUCKET tokens), run plain causal attention on each group, and scatter
# the outputs back. Every query sees exactly the keys of its own example, so it matches the
# masked SDPA (tests/test_train.py checks the per-example losses), with no mask to build at
# all, position jitter included. Used by training when train.packed_attention is on; other
# calls (validation, generation) fall through to transformers' SDPA.
PACKED_ATTENTION = "reasonlm_packed"
BUCKET = 16
NO_MASK = torch.ones(1, 1, 1, 1, dtype=torch.bool)


class PackedRows:
    """Where each example of a packed batch sits, for `packed_attention_forward`.

    source:  for every slot of the groups (example-major, padded to the group length), the index
             of the token it reads in the flat sequence; pad slots repeat the example's last token,
             which no real query sees (attention is causal) and whose outputs are dropped
    groups:  [(examples, padded length)] in slot order
    slot:    for every flat token, the slot holding its output
    """

    def __init__(self, source, groups, slot):
        self.source, self.groups, self.slot = source, groups, slot

    def to(self, device) -> PackedRows:
        """The same layout with its index tensors on `device` (the model's: a GPU's index_select
        takes no CPU index)."""
        return PackedRows(self.source.to(device), self.groups, self.slot.to(device))

    @classmethod
    def from_lengths(cls, lengths):
        """lengths: of the examples lying back to back in the flat sequence."""
        by_length: dict[int, list] = {}
        start = 0
        for n in lengths:
            by_length.setdefault(-(-n // BUCKET) * BUCKET, []).append((start, n))
            start += n
        sources, groups, slot, offset = [], [], torch.empty(start, dtype=torch.long), 0
        for length, items in sorted(by_length.items()):
            starts, lens = torch.tensor(items).T
            j = torch.arange(length)
            sources.append((starts[:, None] + torch.minimum(j, lens[:, None] - 1)).reshape(-1))
            here = offset + torch.arange(len(items) * length).view(len(items), length)
            real = j < lens[:, None]
            slot[(starts[:, None] + j)[real]] = here[real]
            groups.append((len(items), length))
            offset += len(items) * length
        return cls(torch.cat(sources), groups, slot)


_causal_bias_cache: dict = {}


def _causal_bias(length: int, dtype, device):
    key = (length, dtype, device)
    if key not in _causal_bias_cache:
        _causal_bias_cache[key] = torch.full((length, length), float("-inf"), dtype=dtype, device=device).triu(1)
    return _causal_bias_cache[key]


def packed_attention_forward(module, query, key, value, attention_mask, dropout=0.0, scaling=None,
                             packed_rows: PackedRows | None = None, **kwargs):
    """transformers attention function: (batch, heads, seq, dim) in, (batch, seq, heads, dim) out."""
    if packed_rows is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                      scaling=scaling, **kwargs)
    b, heads, t, dim = query.shape
    groups = heads // key.shape[1]
    if groups > 1:  # grouped-query attention: every query head gets its key/value head
        key, value = (x.repeat_interleave(groups, dim=1) for x in (key, value))
    scale = scaling if scaling is not None else dim ** -0.5
    # (batch, heads, seq, dim) -> one row per token -> the examples' slots, in group order
    q, k, v = (x.transpose(1, 2).reshape(b * t, heads * dim).index_select(0, packed_rows.source)
               for x in (query, key, value))
    outs, offset = [], 0
    for n, length in packed_rows.groups:
        part = slice(offset, offset + n * length)
        offset += n * length
        qg, kg, vg = (x[part].view(n, length, heads, dim).transpose(1, 2).reshape(n * heads, length, dim)
                      for x in (q, k, v))
        scores = torch.baddbmm(_causal_bias(length, qg.dtype, qg.device), qg, kg.transpose(1, 2), alpha=scale)
        probs = scores.softmax(-1)
        if dropout:
            probs = F.dropout(probs, dropout)
        out = torch.bmm(probs, vg).view(n, heads, length, dim).transpose(1, 2).reshape(n * length, heads * dim)
        outs.append(out)
    return torch.cat(outs).index_select(0, packed_rows.slot).view(b, t, heads, dim), None


def use_packed_attention(model):
    """Register `packed_attention_forward` with transformers and switch `model` to it. Calls without
    a PackedRows (and mask building for them) behave exactly like 'sdpa'."""
    AttentionInterface.register(PACKED_ATTENTION, packed_attention_forward)
    AttentionMaskInterface.register(PACKED_ATTENTION, sdpa_mask)
    model.set_attn_implementation(PACKED_ATTENTION)


def packed_forward(model, input_ids, position_ids, layout: PackedRows):
    """`model`'s output on one flat row of examples back to back (training's rows, RL's samples),
    kept apart by `layout`. transformers passes a 4D mask through untouched; the one-element
    NO_MASK stand-in skips its mask building (for a flat row of ~6,000 tokens it would materialise
    a 6,000^2 block mask, 50 ms a step here), and packed_attention_forward never reads it."""
    return model(input_ids=input_ids, position_ids=position_ids, attention_mask=NO_MASK.to(input_ids.device),
                 packed_rows=layout, use_cache=False)
