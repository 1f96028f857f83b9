"""The training loop: packing is exact, loss masks are right, the loop learns and resumes."""
import pytest
import torch
import torch.nn.functional as F

from reasonlm import packing, train
from reasonlm.answer import encode_example, encode_prompt, end_of_turn, prompt_messages, render_completion
from tests.helpers import rows

torch.set_num_threads(2)


def per_example_losses(model, examples, row_indices, seq_len):
    ids, labels, pos, _ = packing.collate(examples, row_indices, seq_len, pad_id=0)
    logits = model(input_ids=ids, position_ids=pos, use_cache=False).logits[:, :-1]
    tok_loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), labels[:, 1:].reshape(-1),
                               ignore_index=-100, reduction="none").view(len(row_indices), -1)
    out = {}
    for r, idxs in enumerate(row_indices):
        t = 0
        for i in idxs:
            n = len(examples[i][0])
            mask = labels[r, t + 1:t + n] != -100
            out[i] = tok_loss[r, t:t + n - 1][mask].mean().item()
            t += n
    return out


def test_packed_batch_gives_the_same_per_example_loss_as_one_by_one(toy):
    model, tok = toy
    model.eval()
    examples = train.encode_rows(rows(6), tok, "cot", 128)
    packed = per_example_losses(model, examples, [[0, 1, 2], [3, 4, 5]], 128)
    alone = {}
    for i in range(6):
        alone.update(per_example_losses(model, examples, [[i]], len(examples[i][0])))
    for i in range(6):
        assert packed[i] == pytest.approx(alone[i], abs=1e-5)


def test_packing_changes_the_loss_if_examples_could_see_each_other(toy):
    """Guards the test above: with a plain causal mask (no position resets) losses differ."""
    model, tok = toy
    model.eval()
    examples = train.encode_rows(rows(3), tok, "cot", 128)
    ids, labels, pos, _ = packing.collate(examples, [[0, 1, 2]], 128, pad_id=0)
    plain = torch.arange(128)[None]
    a = train.token_losses(model, ids, labels, pos)[0].item()
    b = train.token_losses(model, ids, labels, plain)[0].item()
    assert abs(a - b) > 1e-3


def test_loss_only_on_completion_and_end_of_turn(toy):
    _, tok = toy
    r = rows(1)[0]
    (ids, labels), = train.encode_rows([r], tok, "cot", 128)
    prompt = encode_prompt(tok, prompt_messages(r["question"]))
    assert ids[:len(prompt)] == prompt  # exactly the tokens eval and chat will feed
    assert all(x == -100 for x in labels[:len(prompt)])
    supervised = [x for x in labels if x != -100]
    assert tok.decode(supervised) == render_completion(r["steps"], r["answer"]) + end_of_turn(tok)
    assert supervised[-1] == tok.convert_tokens_to_ids(end_of_turn(tok))


def test_direct_format_has_no_steps(toy):
    _, tok = toy
    r = rows(1, steps=(3, 3))[0]
    (ids, labels), = train.encode_rows([r], tok, "direct", 128)
    assert tok.decode([x for x in labels if x != -100]) == f"#### {r['answer']}" + end_of_turn(tok)


def test_too_long_examples_are_dropped_or_refused(toy):
    _, tok = toy
    data = rows(4, steps=(4, 4))
    with pytest.raises(train.TrainError, match="seq_len"):
        train.encode_rows(data, tok, "cot", 10, too_long="error")
    with pytest.raises(train.TrainError, match="no training examples"):
        train.encode_rows(data, tok, "cot", 10, too_long="drop")


def test_pack_fills_rows_without_exceeding_them(toy):
    _, tok = toy
    examples = train.encode_rows(rows(200), tok, "cot", 96)
    packed = packing.pack(examples, 96, seed=0)
    assert sorted(i for row in packed for i in row) == list(range(200))
    used = [sum(len(examples[i][0]) for i in row) for row in packed]
    assert max(used) <= 96
    assert sum(used) / (96 * len(packed)) > 0.9


def test_encode_example_matches_the_eval_prompt(toy):
    _, tok = toy
    prompt, completion = encode_example(tok, "3+4", "3+4=7\n#### 7")
    assert prompt == encode_prompt(tok, prompt_messages("3+4"))


def test_jittered_positions_keep_examples_apart(toy):
    """With position jitter the explicit block mask must still isolate packed examples."""
    model, tok = toy
    model.eval()
    examples = train.encode_rows(rows(3), tok, "cot", 128)
    gen = torch.Generator().manual_seed(0)
    ids, labels, pos, mask = packing.collate(examples, [[0, 1, 2]], 128, 0, jitter=8, generator=gen)
    packed = train.token_losses(model, ids, labels, pos, mask)[0].item()
    alone = 0.0
    t = 0
    for i in range(3):
        n = len(examples[i][0])
        a_ids, a_lab, a_pos = ids[:, t:t + n], labels[:, t:t + n], pos[:, t:t + n]
        causal = torch.ones(n, n, dtype=torch.bool).tril()[None, None]  # gaps would otherwise read as resets
        alone += train.token_losses(model, a_ids, a_lab, a_pos, causal)[0].item()
        t += n
    assert packed == pytest.approx(alone, rel=1e-5)
    steps = pos[0, 1:t] - pos[0, :t - 1]
    assert steps.max() > 1  # some completion was shifted away from its prompt


def test_line_jitter_shifts_every_completion_line_and_nothing_in_the_prompt(toy):
    _, tok = toy
    examples = train.encode_rows(rows(3), tok, "cot", 128)
    nl = tok.encode("\n", add_special_tokens=False)[0]
    ids, labels, pos, _ = packing.collate(examples, [[0]], 128, 0, jitter=8,
                                        generator=torch.Generator().manual_seed(0), line_break_id=nl)
    n, lab = len(examples[0][0]), examples[0][1]
    start = next(k for k, x in enumerate(lab) if x != packing.IGNORE)
    gaps = (pos[0, 1:n] - pos[0, :n - 1]).tolist()
    assert all(g == 1 for g in gaps[:start - 1])  # the prompt keeps consecutive positions
    assert all(1 <= g <= 9 for g in gaps)
    jumps = [k + 1 for k, g in enumerate(gaps) if g > 1]  # positions where a shift starts
    breaks_in_completion = [k + 1 for k in range(start, n - 1) if examples[0][0][k] == nl]
    assert set(jumps) <= set(breaks_in_completion) | {start}
    assert set(jumps) & set(breaks_in_completion)  # (seeded) some line break really got a shift


def masked_and_packed(model, examples, row_indices, seq_len, jitter=8):
    """Loss and gradients of one packed batch through SDPA with the block mask and through
    packed_attention_forward (same positions, same jitter)."""
    import copy
    packed_model = copy.deepcopy(model)
    packing.use_packed_attention(packed_model)
    out = []
    for m, packed in ((model, False), (packed_model, True)):
        m.zero_grad(set_to_none=True)
        gen = torch.Generator().manual_seed(0)
        ids, labels, pos, attention = packing.collate(examples, row_indices, seq_len, 0, jitter=jitter, generator=gen,
                                                    packed_attention=packed)
        loss = train.token_losses(m, ids, labels, pos, attention)[0]
        loss.backward()
        out.append((loss.item(), {n: p.grad.clone() for n, p in m.named_parameters()}))
    return out


@pytest.mark.parametrize("kv_heads", [4, 2])  # 2: grouped-query attention (as in Qwen2.5)
def test_packed_attention_matches_the_block_mask_in_loss_and_gradients(toy, kv_heads):
    from transformers import LlamaConfig, LlamaForCausalLM
    model, tok = toy
    if kv_heads != model.config.num_key_value_heads:
        cfg = LlamaConfig(**{**model.config.to_dict(), "num_key_value_heads": kv_heads})
        torch.manual_seed(0)
        model = LlamaForCausalLM(cfg)
    model.eval()
    examples = train.encode_rows(rows(9), tok, "cot", 160)
    packed_rows = packing.pack(examples, 160, seed=0)
    assert max(len(r) for r in packed_rows) > 1
    (a, grads_a), (b, grads_b) = masked_and_packed(model, examples, packed_rows, 160)
    assert b == pytest.approx(a, rel=1e-5)
    for name, g in grads_a.items():
        torch.testing.assert_close(grads_b[name], g, rtol=1e-4, atol=1e-6)


def test_packed_rows_put_every_token_in_exactly_one_slot_of_its_own_example(toy):
    _, tok = toy
    examples = train.encode_rows(rows(7), tok, "cot", 160)
    row_indices = packing.pack(examples, 160, seed=0)
    ids, labels, pos, layout = packing.collate(examples, row_indices, 160, 0, packed_attention=True)
    # one flat row of the examples back to back, no padding
    order = [i for row in row_indices for i in row]
    assert ids.shape == labels.shape == pos.shape == (1, sum(len(examples[i][0]) for i in order))
    assert ids[0].tolist() == [t for i in order for t in examples[i][0]]
    assert labels[0].tolist() == [t for i in order for t in examples[i][1]]
    flat = ids.reshape(-1)
    assert sorted(layout.slot.tolist()) == sorted(set(layout.slot.tolist()))  # no two tokens share a slot
    assert torch.equal(layout.source[layout.slot], torch.arange(flat.numel()))  # each slot reads its own token
    assert sum(n * length for n, length in layout.groups) == layout.source.numel()
    assert all(length % packing.BUCKET == 0 for _, length in layout.groups)


def test_packed_attention_without_a_layout_is_plain_sdpa(toy):
    """Validation and generation call the switched model without PackedRows (padding masks)."""
    import copy
    model, tok = toy
    model.eval()
    packed_model = copy.deepcopy(model)
    packing.use_packed_attention(packed_model)
    ids = torch.tensor([[5, 6, 7, 8], [0, 0, 9, 10]])
    mask = torch.tensor([[1, 1, 1, 1], [0, 0, 1, 1]])
    with torch.no_grad():
        a = model(input_ids=ids, attention_mask=mask).logits
        b = packed_model(input_ids=ids, attention_mask=mask).logits
    torch.testing.assert_close(a, b)


@pytest.mark.parametrize("layout", ["mask", "packed"])
def test_a_batch_built_on_the_cpu_runs_on_the_models_device(toy, layout):
    """collate builds every batch on the CPU; token_losses moves it, with its mask or its packed
    layout, to the model's device. The meta device stands in for a GPU: an op that mixes it with a
    CPU tensor fails as it does on CUDA (checked first). (Rows kept apart by position-id resets
    alone cannot run on meta: transformers reads the resets' values to build its mask.)"""
    import copy
    model, tok = toy
    model = copy.deepcopy(model).eval()
    packing.use_packed_attention(model)
    model.to("meta")
    examples = train.encode_rows(rows(3), tok, "cot", 160)
    batch = packing.collate(examples, [[0, 1, 2]], 160, 0, jitter=4 if layout == "mask" else 0,
                            generator=torch.Generator().manual_seed(0), packed_attention=layout == "packed")
    with pytest.raises((RuntimeError, NotImplementedError)):
        model(input_ids=batch[0], use_cache=False)  # what a GPU run without the move would do
    loss, count = train.token_losses(model, *batch)
    assert loss.device.type == "meta" and count == int((batch[1][:, 1:] != -100).sum()) > 0
