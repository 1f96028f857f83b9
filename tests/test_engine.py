"""The engine's fast decode path (reasonlm.llama_decoder) against the general path and HF generate,
on random-weight Llama (MHA and grouped kv heads), Qwen2 (biases, grouped kv heads) and LoRA models."""
import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

from reasonlm.answer import stop_token_ids
from reasonlm.engine import KVCacheEngine, SamplingParams, dealt_to, engine_for, pick, plan_batches, row_keys
from reasonlm.llama_decoder import CACHE_CHUNK, LlamaDecoder
from reasonlm.packing import use_packed_attention

torch.set_num_threads(1)
SIZES = dict(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
             max_position_embeddings=512, pad_token_id=0, eos_token_id=1)
PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def random_model(arch: str, attn: str = "sdpa"):
    torch.manual_seed(0)
    if arch == "llama":
        model = LlamaForCausalLM._from_config(LlamaConfig(**SIZES, num_key_value_heads=4), attn_implementation=attn)
    elif arch == "llama-gqa":  # SmolLM2's shape: fewer kv heads than query heads
        model = LlamaForCausalLM._from_config(LlamaConfig(**SIZES, num_key_value_heads=2), attn_implementation=attn)
    elif arch == "qwen2":
        model = Qwen2ForCausalLM._from_config(Qwen2Config(**SIZES, num_key_value_heads=2), attn_implementation=attn)
    else:  # a LoRA adapter with random (non-zero) B, so the adapter changes every projection
        model = get_peft_model(random_model("llama-gqa"), LoraConfig(r=4, lora_alpha=8, target_modules=PROJECTIONS,
                                                                     init_lora_weights=False))
    return model.eval()


def prompts(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(2, SIZES["vocab_size"], (int(torch.randint(3, 14, (1,), generator=g)),), generator=g).tolist()
            for _ in range(n)]


def generate(model, ps, budgets, fast=True, stop_ids=frozenset({1}), on_token=None, **params):
    engine = KVCacheEngine(model, 0, set(stop_ids), decode=lambda ids: " ".join(map(str, ids)), fast=fast)
    return engine.generate(ps, SamplingParams(max_new_tokens=budgets, **params), on_token=on_token)


@pytest.mark.parametrize("arch", ["llama", "llama-gqa", "qwen2", "lora"])
def test_fast_greedy_equals_the_general_path_and_hf_generate(arch):
    model = random_model(arch)
    assert LlamaDecoder.for_model(model) is not None
    ps = prompts(12)
    budgets = [5 + 3 * (i % 7) for i in range(12)]  # rows finish at different steps: the cache drops rows
    fast = generate(model, ps, budgets, batch_size=5)
    assert fast == generate(model, ps, budgets, fast=False, batch_size=5)
    assert fast == [generate(model, [p], [b], batch_size=1)[0] for p, b in zip(ps, budgets)]
    for p, b, ours in list(zip(ps, budgets, fast))[:4]:
        x = torch.tensor([p])
        y = model.generate(input_ids=x, attention_mask=torch.ones_like(x), max_new_tokens=b, do_sample=False,
                           eos_token_id=1, pad_token_id=0)[0, len(p):].tolist()
        assert ours == y[:next((i for i, t in enumerate(y) if t == 1), len(y))]


def test_cache_grows_past_its_first_chunk():
    model = random_model("qwen2")
    ps, budget = prompts(3, seed=1), CACHE_CHUNK + 40
    fast = generate(model, ps, budget, stop_ids=set())
    assert [len(o) for o in fast] == [budget] * 3
    assert fast == generate(model, ps, budget, fast=False, stop_ids=set())


@pytest.mark.parametrize("arch", ["llama-gqa", "lora"])
def test_sampling_is_reproducible_per_row_and_matches_the_general_path(arch):
    model = random_model(arch)
    ps, seeds = prompts(7, seed=2), [11, 12, 13, 14, 15, 16, 17]
    budgets = [4, 20, 9, 20, 2, 15, 20]
    together = generate(model, ps, budgets, temperature=1.0, top_p=0.9, seeds=seeds, batch_size=7)
    apart = [generate(model, [p], [b], temperature=1.0, top_p=0.9, seeds=[s])[0]
             for p, b, s in zip(ps, budgets, seeds)]
    assert together == apart
    assert together == generate(model, ps, budgets, fast=False, temperature=1.0, top_p=0.9, seeds=seeds)
    # one shared stream (no per-row seeds): the fast path draws exactly what the general path draws
    shared = generate(model, ps, budgets, temperature=1.0, seed=5, batch_size=7)
    assert shared == generate(model, ps, budgets, fast=False, temperature=1.0, seed=5, batch_size=7)
    assert generate(model, ps, budgets, temperature=1.0, seeds=[s + 100 for s in seeds]) != together


def test_stop_strings_budgets_and_streaming_on_the_fast_path():
    model = random_model("llama")
    ps = prompts(4, seed=3)
    free = generate(model, ps, 12, stop_ids=set())
    assert [len(o) for o in free] == [12] * 4
    stop = f"{free[0][4]} {free[0][5]}"  # the decoded text of two tokens of row 0
    streamed = []
    stopped = generate(model, ps, 12, stop_ids=set(), stop_strings=(stop,),
                       on_token=lambda i, t: streamed.append((i, t)))
    assert stopped[0] == free[0][:len(stopped[0])] and len(stopped[0]) <= 6
    for i, out in enumerate(stopped):
        assert [t for j, t in streamed if j == i] == out  # every token streamed once, in order
        assert out == free[i][:len(out)]


def test_models_the_fast_path_does_not_know_take_the_general_path():
    assert LlamaDecoder.for_model(random_model("llama", attn="eager")) is None
    assert LlamaDecoder.for_model(random_model("llama").train()) is None
    torch.manual_seed(0)
    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=96, n_embd=32, n_layer=2, n_head=4, n_positions=128)).eval()
    assert LlamaDecoder.for_model(gpt2) is None
    ps = prompts(3)
    assert generate(gpt2, ps, 6) == generate(gpt2, ps, 6, fast=False)
    dora = get_peft_model(random_model("llama"), LoraConfig(r=4, target_modules=["q_proj"], use_dora=True))
    assert LlamaDecoder.for_model(dora.eval()) is None


def test_a_model_switched_to_packed_attention_keeps_the_fast_path_and_its_outputs():
    """Training and RL switch their model to packed attention, which is SDPA for every call without
    packed rows: checking accuracy or sampling mid-run decodes on the fast path, token for token
    as before the switch."""
    model = random_model("lora")
    ps, budgets = prompts(6), [9] * 6
    before = generate(model, ps, budgets, batch_size=3)
    use_packed_attention(model)
    assert LlamaDecoder.for_model(model) is not None
    assert generate(model, ps, budgets, batch_size=3) == before == generate(model, ps, budgets, fast=False, batch_size=3)


def test_per_row_noise_draws_from_the_softmax_and_respects_top_p():
    """Gumbel-max on the hashed per-row noise is an exact sampler: 20,000 rows with their own
    seeds, one step, land on each token with softmax's probability (within 4 standard errors);
    top_p leaves out the tail; a row's draw depends on its seed and step only."""
    logits = torch.tensor([2.0, 1.0, 0.5, 0.0, -1.0, -3.0])
    n, p = 20_000, torch.softmax(logits, -1)
    keys = row_keys(list(range(n)))
    drawn = pick(logits.expand(n, -1), 1.0, 1.0, keys, step=3)
    freq = torch.bincount(drawn, minlength=6).double() / n
    assert ((freq - p.double()).abs() <= 4 * (p.double() * (1 - p.double()) / n).sqrt() + 1e-9).all(), freq
    nucleus = pick(logits.expand(n, -1), 1.0, 0.8, keys, step=3)
    assert set(nucleus.tolist()) == {0, 1, 2}  # 0.53 + 0.19 + 0.12 reaches 0.8 at the third token
    assert torch.equal(pick(logits.expand(5, -1), 1.0, 1.0, keys[[7, 3, 9, 1, 0]], step=3), drawn[[7, 3, 9, 1, 0]])
    assert not torch.equal(pick(logits.expand(n, -1), 1.0, 1.0, keys, step=4), drawn)


@pytest.mark.parametrize("arch", ["qwen2", "lora"])  # qwen2: biases on q/k/v; lora: adapters to fold
def test_folded_lora_decodes_the_same_logits_up_to_rounding(arch):
    """fold_lora (RL's sampler) computes the same function as the op-for-op path: same logits at
    every decode step to float rounding, on a batch with padding."""
    model = random_model(arch)
    ps = prompts(5, seed=4)
    width = max(map(len, ps))
    ids = torch.tensor([[0] * (width - len(p)) + p for p in ps])
    mask = (torch.arange(width)[None, :] >= torch.tensor([width - len(p) for p in ps])[:, None]).long()
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    plain, folded = LlamaDecoder.for_model(model), LlamaDecoder.for_model(model, fold_lora=True)
    a, b = plain.prefill(ids, mask, positions), folded.prefill(ids, mask, positions)
    for _ in range(6):
        assert torch.allclose(a, b, atol=1e-5), (a - b).abs().max()
        token = a.argmax(-1)
        a, b = plain.step(token), folded.step(token)


@pytest.mark.parametrize("world", [2, 3])
def test_sharded_generate_decodes_each_batch_once_and_equals_one_process(world):
    """generate(rank=r, world=N): each process decodes only the batches dealt to it (the others'
    rows are None), and the processes' rows together are what one process samples, row for row."""
    model, ps = random_model("llama"), prompts(11, seed=3)
    params = SamplingParams(max_new_tokens=6, temperature=1.0, seeds=list(range(100, 111)), batch_size=2)
    engine = KVCacheEngine(model, 0, {1})
    whole = engine.generate(ps, params)
    parts = [engine.generate(ps, params, rank=r, world=world) for r in range(world)]
    for i in range(len(ps)):
        owners = [r for r in range(world) if parts[r][i] is not None]
        assert len(owners) == 1 and parts[owners[0]][i] == whole[i]
    batches = plan_batches(ps, [6] * len(ps), 2)
    assert [sorted(i for b in plan_batches(ps, [6] * len(ps), 2, r, world) for i in b) for r in range(world)] == [
        sorted(i for k, b in enumerate(batches) if dealt_to(k, world) == r for i in b) for r in range(world)]
    with pytest.raises(ValueError, match="per-row seeds"):
        engine.generate(ps, SamplingParams(max_new_tokens=2, temperature=1.0), rank=0, world=2)


def test_plan_batches_sorts_by_length_then_budget_and_the_engine_for_a_tokenizer_reads_it():
    from tests.helpers import tiny_model_and_tokenizer
    ps = [[5] * 4, [5] * 2, [5] * 4, [5] * 3]
    assert plan_batches(ps, [9, 9, 3, 9], 2) == [[1, 3], [2, 0]]  # length 4: the budget 3 first
    model, tok = tiny_model_and_tokenizer()
    engine = engine_for(model, tok, fast=False)
    assert engine.pad_id == tok.pad_token_id and engine.stop_ids == stop_token_ids(tok) and not engine.fast
    assert engine.decode(tok.encode("1+2")) == "1+2"


# --- continuous batching: rows join a running batch (LiveBatch, the server's) -------------------
def live_run(model, schedule, fast=True, steps_between=3):
    """Admit each (prompts, budgets, settings) group of `schedule` `steps_between` steps after the
    last, then decode until every row ends; the rows' tokens, and the cache's longest length."""
    engine = KVCacheEngine(model, 0, {1}, fast=fast)
    batch, rows, longest = engine.live_batch(), [], 0
    for ps, budgets, settings in schedule:
        group = [batch.new_row(b, **settings) for b in budgets]
        batch.admit(ps, group)
        rows += group
        for _ in range(steps_between):
            if batch.live:
                batch.step()
    while batch.live:
        batch.step()
        if batch.decoder is not None:
            longest = max(longest, batch.decoder.length if fast else batch.decoder.mask.shape[1])
    return [r.tokens for r in rows], longest


@pytest.mark.parametrize("arch, fast", [("llama-gqa", True), ("qwen2", True), ("lora", True), ("llama", False)])
def test_rows_that_join_a_running_batch_get_what_they_get_alone(arch, fast):
    model = random_model(arch)
    ps = prompts(7, seed=3)
    # a short prompt first, then longer ones (the running rows are left-padded), then shorter ones
    ps = sorted(ps, key=len)
    # sampled rows at the same settings joining 3 steps apart draw in one call at different noise indices
    schedule = [([ps[0]], [40], {}), ([ps[6], ps[5]], [12, 30], {}), ([ps[1]], [8], {"temperature": 1.2, "top_p": 0.9,
                                                                                     "seed": 5}),
                ([ps[4], ps[2]], [20, 6], {"temperature": 0.8, "seed": 7}), ([ps[3]], [25], {"temperature": 0.8,
                                                                                          "seed": 9})]
    got, _ = live_run(model, schedule, fast=fast)
    want = []
    for group, budgets, settings in schedule:
        for p, b in zip(group, budgets):
            params = {k: v for k, v in settings.items() if k != "seed"}
            seeds = [settings.get("seed", 0)] if settings else None
            want.append(generate(model, [p], [b], fast=fast, seeds=seeds, **params)[0])
    assert got == want
    assert any(len(t) > 20 for t in got)  # rows really overlapped


def test_a_row_whose_budget_drops_to_zero_leaves_at_the_next_step():
    model = random_model("llama")
    engine = KVCacheEngine(model, 0, set())  # no stop token: rows run to their budgets
    batch = engine.live_batch()
    a, b = batch.new_row(30), batch.new_row(30)
    batch.admit(prompts(2), [a, b])
    for _ in range(4):
        batch.step()
    a.budget = 0  # what the server's Job.cancel does
    batch.step()
    assert len(a.tokens) == 4 and a.done and not b.done
    while batch.live:
        batch.step()
    assert len(b.tokens) == 30 and batch.decoder is None  # an empty batch lets its cache go


def test_the_cache_of_a_batch_that_never_empties_stays_as_long_as_its_longest_row():
    """A server under steady load: rows keep joining while others run; padding no row needs is cut."""
    model = random_model("llama-gqa")
    ps = prompts(24, seed=5)
    schedule = [([p], [10], {}) for p in ps]  # one joins every 3 steps, each lives <= 10 steps
    got, longest = live_run(model, schedule)
    assert longest <= max(map(len, ps)) + 10 + 3 * 4  # not 24 * 3 steps of history
    assert got == [generate(model, [p], [10])[0] for p in ps]
