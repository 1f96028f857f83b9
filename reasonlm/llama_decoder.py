"""The engine's fast decode step for Llama-family models (Llama, SmolLM2, Qwen2): one new token per
row on a preallocated KV cache, with the decoder layers' arithmetic called directly.

    decoder = LlamaDecoder.for_model(model)   # None: not a model this file knows; use the general path
    logits = decoder.prefill(ids, mask, positions)
    logits = decoder.step(tokens)              # [rows] -> [rows, vocab]
    decoder.keep(rows)                         # drop the other rows from the cache (or repeat some)

Per-row lengths (checker-guided search, reasonlm/engine.py RowSession): after `ragged()`, every row
writes at its own cache column, `step_rows(tokens, advance)` moves only the rows that advance,
and `rewind(row, n)` moves a row back by n positions: a pointer move, its later columns masked.

Why: at small sizes a decode step costs Python and framework overhead, not FLOPs. HF's forward per
token builds a mask, walks ~20 nn.Module calls per layer (PEFT's LoRA wrappers add their own
bookkeeping to each projection) and grows the cache with a `cat` of all of it. Here the cache is
preallocated (new keys/values are written in place, the mask is a slice of a preallocated
buffer), and each projection is plain `F.linear` calls on the module's own weight tensors.

Greedy outputs are identical to HF's forward: the prompt is prefilled by the model's own forward,
and every decode operation is the one `modeling_llama` / `modeling_qwen2` and PEFT's `lora.Linear`
run, in the same order on the same tensors (RMSNorm, rotary and activation are the model's own
modules). Which models take this path is decided from the model class and config, never probed;
anything else (another architecture, eager/flash attention, sliding windows, a DoRA or merged
adapter, a model in training mode) goes through the engine's general path.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from peft import PeftModel
from peft.tuners.lora import Linear as LoraLinear
from transformers import DynamicCache, LlamaForCausalLM, Qwen2ForCausalLM
from transformers.models.llama.modeling_llama import LlamaRMSNorm
from transformers.models.qwen2.modeling_qwen2 import Qwen2RMSNorm

from reasonlm.packing import PACKED_ATTENTION

RMS_NORMS = (LlamaRMSNorm, Qwen2RMSNorm)
CACHE_CHUNK = 128  # cache positions added at a time: growing by a cat is rare, not per token


class LlamaDecoder:
    """Decode state of one batch: per-layer key/value buffers [rows, kv_heads, capacity, head_dim]."""
    keep_below = 0.75
    """The engine drops finished rows once at most this fraction of the cache's rows is live: copying
    the whole cache for every row that finishes costs more than decoding a few dead rows."""

    @staticmethod
    def for_model(model: torch.nn.Module, fold_lora: bool = False) -> "LlamaDecoder | None":
        """A decoder for `model` (plain or a PEFT LoRA model), or None when the general path must run it.

        fold_lora: decode with every LoRA adapter folded into its weight (W + s·B·A, computed here,
        once per batch) and q/k/v and gate/up each fused into one matmul: 4 matmuls per layer
        instead of 21 for an all-linear LoRA. The outputs equal the unfolded ones up to float
        rounding, not bit for bit, so RL's sampling uses it and eval (outputs identical to HF's
        forward) does not."""
        lm = model.get_base_model() if isinstance(model, PeftModel) else model
        if model.training or type(lm) not in (LlamaForCausalLM, Qwen2ForCausalLM):
            return None
        config = lm.config
        # eager/flash attention round differently; packed attention is SDPA for every call without
        # packed rows, such as these (a model training with it checks its accuracy through here)
        if config._attn_implementation not in ("sdpa", PACKED_ATTENTION):
            return None
        if type(lm) is Qwen2ForCausalLM and any(t != "full_attention" for t in config.layer_types):
            return None  # sliding-window layers need a rolling cache
        if config.hidden_act != "silu" or type(lm.model.norm) not in RMS_NORMS:
            return None
        layers = []
        for layer in lm.model.layers:
            attn, mlp = layer.self_attn, layer.mlp
            if type(layer.input_layernorm) not in RMS_NORMS or type(layer.post_attention_layernorm) not in RMS_NORMS:
                return None
            if fold_lora:
                qkv, o = fused_fn(attn.q_proj, attn.k_proj, attn.v_proj), fused_fn(attn.o_proj)
                gate_up, down = fused_fn(mlp.gate_proj, mlp.up_proj), fused_fn(mlp.down_proj)
            else:
                q, k, v, o, gate, up, down = (linear_fn(m) for m in (attn.q_proj, attn.k_proj, attn.v_proj,
                                                                     attn.o_proj, mlp.gate_proj, mlp.up_proj,
                                                                     mlp.down_proj))
                qkv = None if None in (q, k, v) else (lambda x, q=q, k=k, v=v: (q(x), k(x), v(x)))
                gate_up = None if None in (gate, up) else (lambda x, g=gate, u=up: (g(x), u(x)))
                o, down = (None if f is None else (lambda x, f=f: (f(x),)) for f in (o, down))
            if None in (qkv, o, gate_up, down):
                return None
            norm1, norm2 = layer.input_layernorm, layer.post_attention_layernorm
            layers.append((norm1.weight, norm1.variance_epsilon, norm2.weight, norm2.variance_epsilon,
                           qkv, o, gate_up, down, F.silu))
        return LlamaDecoder(model, lm, layers)

    def __init__(self, model, lm, layers: list[tuple]):
        self.model, self.lm, self.layers = model, lm, layers  # per layer: norms, projections, activation
        self.final_norm, self.final_eps = lm.model.norm.weight, lm.model.norm.variance_epsilon
        attn = lm.model.layers[0].self_attn
        self.head_dim, self.groups, self.scaling = attn.head_dim, attn.num_key_value_groups, attn.scaling
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []
        self.mask = self.pos = None
        self.length = 0  # cache positions filled (the same for every row: prompts are left-padded)
        self.pads: list[int] = []  # padding per row: a batch with none attends without a mask, as HF does
        self.at: torch.Tensor | None = None  # after ragged(): the column each row writes next
        self.even = True  # after ragged(): every row still at the same column with nothing masked

    def prefill(self, ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Run the prompts through the model's own forward and move its cache into the buffers."""
        cache = DynamicCache()
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, cache=cache,
                         use_cache=True, logits_to_keep=1)
        rows, width = ids.shape
        self.length = width
        # the decode steps run in the weights' dtype; a forward under autocast (Accelerate wraps a
        # prepared model's forward in it for bf16 runs) leaves a cache in another dtype
        dtype = next(self.model.parameters()).dtype
        self.keys = [grow(layer.keys.to(dtype), CACHE_CHUNK) for layer in cache.layers]
        self.values = [grow(layer.values.to(dtype), CACHE_CHUNK) for layer in cache.layers]
        self.mask = grow(mask.bool(), CACHE_CHUNK, fill=True)
        self.pos = positions[:, -1:].clone()
        self.pads = (width - mask.sum(-1)).tolist()
        return out.logits[:, -1]

    def keep(self, rows: list[int]) -> None:
        sel = torch.tensor(rows, device=self.mask.device)
        self.keys = [k.index_select(0, sel) for k in self.keys]
        self.values = [v.index_select(0, sel) for v in self.values]
        self.mask, self.pos = self.mask.index_select(0, sel), self.pos.index_select(0, sel)
        self.pads = [self.pads[r] for r in rows]
        if self.at is not None:
            self.at = self.at.index_select(0, sel)

    # --- per-row lengths ---------------------------------------------------------------------
    def ragged(self) -> None:
        """From now on each row keeps its own length (step_rows, rewind); call right after prefill."""
        self.at = torch.full((len(self.pads),), self.length, dtype=torch.long, device=self.mask.device)
        self.mask[:, self.length:] = False

    def rewind(self, row: int, n: int) -> None:
        """Forget the last `n` positions of `row` (a pointer move; the columns are masked)."""
        if n <= 0:
            return
        self.at[row] -= n
        self.pos[row] -= n
        self.mask[row, int(self.at[row]):] = False
        self.even = False

    def step_rows(self, tokens: torch.Tensor, advance: list[bool]) -> torch.Tensor:
        """Feed one token per row at the row's own column; rows with advance False are fed a dummy
        that is overwritten by their next real token (their length does not change)."""
        at = self.at
        width = int(at.max()) + 1
        while width > self.keys[0].shape[2]:
            self.keys = [grow(k, CACHE_CHUNK) for k in self.keys]
            self.values = [grow(v, CACHE_CHUNK) for v in self.values]
            self.mask = grow(self.mask, CACHE_CHUNK, fill=False)
        rows = torch.arange(len(at), device=at.device)
        self.mask[rows, at] = True
        if not all(advance):
            self.even = False
        pos = self.pos + 1
        mask = self.mask[:, None, None, :width] if any(self.pads) or not self.even else None

        def write(keys, values, k, v):
            keys[rows, :, at] = k[:, :, 0]
            values[rows, :, at] = v[:, :, 0]

        logits = self._forward(tokens, pos, write, width, mask)
        step = torch.tensor(advance, dtype=torch.long, device=at.device)
        self.at = at + step
        self.pos = torch.where(step[:, None].bool(), pos, self.pos)
        return logits

    def join(self, ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Prefill new rows on their own (as `prefill` would, alone) and append them to this batch's
        cache between two steps, the shorter side left-padded; their first logits [new rows, vocab].
        The rows already here keep their keys, values and positions (continuous batching)."""
        if not self.keys:
            return self.prefill(ids, mask, positions)
        new = LlamaDecoder(self.model, self.lm, self.layers)
        logits = new.prefill(ids, mask, positions)
        if self.at is not None:
            self._join_ragged(new)
            return logits
        width = max(self.length, new.length)
        keys, values, masks = [], [], []
        for part in (self, new):
            shift = width - part.length  # pad columns on the left: the last token stays at the end
            keys.append([pad_left(k[:, :, :part.length], shift, CACHE_CHUNK) for k in part.keys])
            values.append([pad_left(v[:, :, :part.length], shift, CACHE_CHUNK) for v in part.values])
            masks.append(pad_left(part.mask[:, :part.length], shift, CACHE_CHUNK))
            part.pads = [p + shift for p in part.pads]
        self.keys = [torch.cat(pair) for pair in zip(*keys)]
        self.values = [torch.cat(pair) for pair in zip(*values)]
        self.mask, self.pos = torch.cat(masks), torch.cat([self.pos, new.pos])
        self.pads, self.length = self.pads + new.pads, width
        return logits

    def _join_ragged(self, new: "LlamaDecoder") -> None:
        """join after ragged(): every row keeps its own columns, so the new rows' prefilled cache is
        appended as it is, both sides given free (masked) columns on the right to the same capacity."""
        new.ragged()
        capacity = max(self.keys[0].shape[2], new.keys[0].shape[2])

        def fit(t: torch.Tensor, fill) -> torch.Tensor:
            extra = capacity - t.shape[2 if t.dim() == 4 else 1]
            return grow(t, extra, fill) if extra else t
        self.keys = [torch.cat([fit(a, 0), fit(b, 0)]) for a, b in zip(self.keys, new.keys)]
        self.values = [torch.cat([fit(a, 0), fit(b, 0)]) for a, b in zip(self.values, new.values)]
        self.mask = torch.cat([fit(self.mask, False), fit(new.mask, False)])
        self.pos, self.at = torch.cat([self.pos, new.pos]), torch.cat([self.at, new.at])
        self.pads, self.even = self.pads + new.pads, False

    def can_join(self) -> bool:
        """Rows can join this cache between steps (join): always, its layers are full attention."""
        return True

    def trim(self) -> None:
        """Drop the leading cache columns that are padding in every row (after rows left)."""
        cut = min(self.pads, default=0)
        if cut:
            self.keys = [k[:, :, cut:] for k in self.keys]
            self.values = [v[:, :, cut:] for v in self.values]
            self.mask, self.length = self.mask[:, cut:], self.length - cut
            self.pads = [p - cut for p in self.pads]

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """Feed one token per row; the next-token logits [rows, vocab]."""
        if self.length == self.keys[0].shape[2]:
            self.keys = [grow(k, CACHE_CHUNK) for k in self.keys]
            self.values = [grow(v, CACHE_CHUNK) for v in self.values]
            self.mask = grow(self.mask, CACHE_CHUNK, fill=True)
        t, self.length = self.length, self.length + 1
        self.pos += 1
        # HF passes no mask when no row is padded (sdpa's own path), a boolean one otherwise
        mask = self.mask[:, None, None, :t + 1] if any(self.pads) else None

        def write(keys, values, k, v):
            keys[:, :, t:t + 1] = k
            values[:, :, t:t + 1] = v

        return self._forward(tokens, self.pos, write, t + 1, mask)

    def _forward(self, tokens, pos, write, width: int, mask) -> torch.Tensor:
        """The decoder layers on one new token per row at positions `pos`; `write` puts the new
        keys/values into the cache, attention reads its first `width` columns."""
        lm, rows, hd = self.lm.model, tokens.shape[0], self.head_dim
        hidden = lm.embed_tokens(tokens[:, None])
        cos, sin = lm.rotary_emb(hidden, position_ids=pos)
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
        # with grouped kv heads and a mask, HF packs the query heads of a kv head as its query length
        gqa = self.groups > 1 and mask is None
        packed = self.groups if self.groups > 1 and mask is not None else 1
        for (norm1, eps1, norm2, eps2, qkv_proj, o_proj, gate_up_proj, down_proj, act), keys, values \
                in zip(self.layers, self.keys, self.values):
            x = rms_norm(hidden, norm1, eps1)
            q, k, v = (y.view(rows, 1, -1, hd).transpose(1, 2) for y in qkv_proj(x))
            q = (q * cos) + (rotate_half(q) * sin)
            write(keys, values, (k * cos) + (rotate_half(k) * sin), v)
            if packed > 1:
                q = q.reshape(rows, -1, packed, hd)
            a = F.scaled_dot_product_attention(q, keys[:, :, :width], values[:, :, :width], attn_mask=mask,
                                               scale=self.scaling, enable_gqa=gqa)
            a = a.reshape(rows, -1, 1, hd).transpose(1, 2).contiguous().reshape(rows, 1, -1).contiguous()
            hidden = hidden + o_proj(a)[0]
            x = rms_norm(hidden, norm2, eps2)
            gate, up = gate_up_proj(x)
            hidden = hidden + down_proj(act(gate) * up)[0]
        hidden = rms_norm(hidden, self.final_norm, self.final_eps)
        return self.lm.lm_head(hidden)[:, -1]


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """LlamaRMSNorm / Qwen2RMSNorm.forward, op for op."""
    h = x.to(torch.float32)
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight * h.to(x.dtype)


def linear_fn(module: torch.nn.Module) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """`module(x)` as plain F.linear calls on its weights, in PEFT's order for a LoRA layer; None for a
    module whose forward does something else (DoRA, merged or disabled adapters, other wrappers)."""
    if type(module) is torch.nn.Linear:
        weight, bias = module.weight, module.bias
        return lambda x: F.linear(x, weight, bias)
    if type(module) is not LoraLinear or type(module.base_layer) is not torch.nn.Linear:
        return None
    if module.disable_adapters or module.merged or module.fan_in_fan_out:
        return None
    weight, bias = module.base_layer.weight, module.base_layer.bias
    loras = []
    for name in module.active_adapters:
        if name not in module.lora_A:
            continue
        a, b = module.lora_A[name].weight, module.lora_B[name].weight
        if name in module.lora_variant or a.dtype != weight.dtype or module.lora_A[name].bias is not None \
                or module.lora_B[name].bias is not None:
            return None
        loras.append((a, b, module.scaling[name]))
    if not loras:
        return lambda x: F.linear(x, weight, bias)
    if len(loras) == 1:
        (a, b, s), = loras
        return lambda x: F.linear(x, weight, bias) + F.linear(F.linear(x, a), b) * s

    def multi(x):
        result = F.linear(x, weight, bias)
        for a, b, s in loras:
            result = result + F.linear(F.linear(x, a), b) * s
        return result
    return multi


def fused_fn(*modules: torch.nn.Module) -> Callable[[torch.Tensor], tuple[torch.Tensor, ...]] | None:
    """The outputs of `modules` (plain or LoRA linears reading the same input) from one F.linear on
    their folded weights, stacked; None where linear_fn would say None."""
    weights, biases = [], []
    for module in modules:
        if linear_fn(module) is None:
            return None
        if type(module) is torch.nn.Linear:
            weight, bias = module.weight, module.bias
        else:
            weight, bias = module.base_layer.weight, module.base_layer.bias
            for name in module.active_adapters:
                if name in module.lora_A:
                    weight = weight + module.scaling[name] * (module.lora_B[name].weight @ module.lora_A[name].weight)
        weights.append(weight.detach())
        biases.append(bias.detach() if bias is not None else torch.zeros(weight.shape[0], dtype=weight.dtype,
                                                                           device=weight.device))
    weight, sizes = torch.cat(weights), [w.shape[0] for w in weights]
    bias = torch.cat(biases) if any(m.bias is not None for m in map(base_linear, modules)) else None
    return lambda x: F.linear(x, weight, bias).split(sizes, dim=-1)


def base_linear(module: torch.nn.Module) -> torch.nn.Linear:
    return module if type(module) is torch.nn.Linear else module.base_layer


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """modeling_llama.rotate_half: (x1, x2) -> (-x2, x1) on the last dimension."""
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def pad_left(t: torch.Tensor, pad: int, extra: int = 0) -> torch.Tensor:
    """`t` (keys/values [rows, heads, len, dim] or a mask [rows, len]) with `pad` masked-out positions
    before it and `extra` free ones after it (a mask's padding is 0/False, its free positions 1/True);
    both decoders' join pad with it."""
    if not pad and not extra:
        return t
    dim = 2 if t.dim() == 4 else 1
    before, after = list(t.shape), list(t.shape)
    before[dim], after[dim] = pad, extra
    return torch.cat([torch.zeros(before, dtype=t.dtype, device=t.device), t,
                      torch.full(after, t.dim() != 4, dtype=t.dtype, device=t.device)], dim=dim)


def grow(t: torch.Tensor, extra: int, fill=0) -> torch.Tensor:
    """`t` with `extra` more positions along the sequence dimension (2 for keys/values, 1 for masks)."""
    dim = 2 if t.dim() == 4 else 1
    shape = list(t.shape)
    shape[dim] = extra
    return torch.cat([t, torch.full(shape, fill, dtype=t.dtype, device=t.device)], dim=dim)
