"""Models and tokenizers: build the tiny offline base, load real ones, attach or merge LoRA.

Two ways to get a base model:
  - `build_tiny(...)`: a Llama-style decoder with random weights and a tokenizer trained here
    with the `tokenizers` library (digits always single tokens, ChatML chat template). This is
    what runs offline; the base stage then pretrains it.
  - `load_model(name)`: `from_pretrained` on a Hub id (e.g. "HuggingFaceTB/SmolLM2-135M-Instruct")
    or a local directory; safetensors only, `trust_remote_code` off.
A LoRA adapter, likewise, is a local directory or a Hub id (`resolve_adapter`).
"""
from __future__ import annotations

import filecmp
import os

import torch

from reasonlm.modelcard import recorded_base
from reasonlm.processes import cores_each

# ChatML, the format SmolLM2 and Qwen2.5 use, so a tiny model and a real one see the same shape.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHAT_TOKENS = ["<|im_start|>", "<|im_end|>"]  # what CHAT_TEMPLATE needs as single tokens


class ModelError(ValueError):
    """A model or adapter that cannot be loaded, reported as one line."""


def train_tokenizer(texts, vocab_size: int = 384):
    """A byte-level BPE trained on `texts`, with every digit and punctuation mark its own token.

    Single-digit tokens make arithmetic regular (a number is read digit by digit) and byte-level
    fallback means any text a user types in the chat can be encoded.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Punctuation(behavior="isolated"),
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=None, eos_token="<|im_end|>",
                                   pad_token="<|endoftext|>", unk_token=None, chat_template=CHAT_TEMPLATE,
                                   model_max_length=100_000)


def build_tiny(tokenizer, hidden_size=128, num_layers=4, num_heads=8, intermediate_size=512,
               max_position=512, rope_theta=10000.0, seed=0):
    """A randomly initialised Llama-style decoder sized for a CPU."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=intermediate_size,
        num_hidden_layers=num_layers, num_attention_heads=num_heads, num_key_value_heads=num_heads,
        max_position_embeddings=max_position, rope_theta=rope_theta, tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, bos_token_id=None,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config)


def load_tokenizer(name: str):
    from transformers import AutoTokenizer
    try:
        tok = AutoTokenizer.from_pretrained(name, trust_remote_code=False)
    except (OSError, ValueError) as e:
        raise ModelError(_load_error(name, e)) from None
    if tok.pad_token is None:  # real models often ship without one; padding is masked anyway
        tok.pad_token = tok.eos_token
    if not tok.chat_template:
        tok.chat_template = CHAT_TEMPLATE
        ensure_chat_tokens(tok)
    return tok


def ensure_chat_tokens(tokenizer) -> list[str]:
    """Add the ChatML markers CHAT_TEMPLATE writes as special tokens if the vocabulary lacks them.

    Without them '<|im_end|>' would be split into pieces and the model could not learn one
    end-of-turn token. The model's embeddings then need new rows (`fit_vocab`), which the train
    stage trains and saves with the adapter. Returns the tokens added; they are also kept on the
    tokenizer as `reasonlm_added_tokens` until it is saved (a reloaded tokenizer already has them).
    """
    vocab = tokenizer.get_vocab()
    missing = [t for t in CHAT_TOKENS if t not in vocab]
    if missing:
        tokenizer.add_special_tokens({"additional_special_tokens": missing}, replace_extra_special_tokens=False)
    tokenizer.reasonlm_added_tokens = missing
    return missing


def adapter_tokenizer(base: str, adapter: str | None):
    """The tokenizer a model with `adapter` reads and writes: the adapter's own (an adapter trained
    with added tokens carries one), else the base's."""
    return load_tokenizer(adapter if adapter and os.path.exists(os.path.join(adapter, "tokenizer_config.json"))
                          else base)


def model_context(name: str) -> int | None:
    """Tokens the model `name` can attend to (max_position_embeddings of its config), read without
    loading its weights; None when its config does not say."""
    from transformers import AutoConfig
    try:
        config = AutoConfig.from_pretrained(name, trust_remote_code=False)
    except (OSError, ValueError) as e:
        raise ModelError(_load_error(name, e)) from None
    n = getattr(config, "max_position_embeddings", None)
    return n if isinstance(n, int) and n > 0 else None


def load_model(name: str, dtype: torch.dtype = torch.float32, quantize_4bit: bool = False):
    """A causal LM from a local directory or a Hub id (safetensors only, no remote code).

    quantize_4bit: QLoRA's frozen NF4 base (bitsandbytes, CUDA), prepared for k-bit training."""
    from transformers import AutoModelForCausalLM
    extra = {}
    if quantize_4bit:
        from transformers import BitsAndBytesConfig
        extra = {"quantization_config": BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                                           bnb_4bit_compute_dtype=torch.bfloat16),
                 "device_map": {"": torch.cuda.current_device()}}
    try:
        model = AutoModelForCausalLM.from_pretrained(name, dtype=dtype, trust_remote_code=False,
                                                     use_safetensors=True, **extra)
    except (OSError, ValueError) as e:
        raise ModelError(_load_error(name, e)) from None
    if quantize_4bit:
        from peft import prepare_model_for_kbit_training
        model = prepare_model_for_kbit_training(model)
    return model


def _load_error(name: str, error: Exception, what: str = "model") -> str:
    if os.path.isdir(name):
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        return f"cannot load {what} from {name}: {first}"
    if looks_like_path(name):
        return f"{what} path not found: {name}"
    offline = os.environ.get("HF_HUB_OFFLINE") == "1"
    return (f"{what} {name!r} is neither a local directory nor reachable on the Hub"
            f"{' (HF_HUB_OFFLINE=1 is set)' if offline else ' (no network? set HF_HUB_OFFLINE=1 to work offline and pass a local path)'}")


def looks_like_path(name: str) -> bool:
    return name.startswith((".", "/", "~")) or os.sep in name and not _looks_like_hub_id(name)


def _looks_like_hub_id(name: str) -> bool:
    parts = name.split("/")
    return len(parts) == 2 and all(parts) and not os.path.exists(parts[0])


def fit_vocab(model, tokenizer) -> int:
    """Give the model an embedding row for every token of `tokenizer`; returns how many tokens
    had no trained row (0 = nothing to do).

    A tokenizer longer than the embedding matrix (tokens added to it) makes the model resize its
    input embedding and LM head to len(tokenizer); the new rows start from the old rows' mean and
    covariance. Tokens `ensure_chat_tokens` just added into a vocabulary padded beyond the
    tokenizer (Qwen-style) need no resize but still have untrained rows, so they count too.
    Call it before attaching the adapter, in training and before loading a saved adapter.
    """
    rows = model.get_input_embeddings().weight.shape[0]
    added = [tokenizer.convert_tokens_to_ids(t) for t in getattr(tokenizer, "reasonlm_added_tokens", [])]
    if len(tokenizer) > rows:
        model.resize_token_embeddings(len(tokenizer), mean_resizing=True)
    return max(0, len(tokenizer) - rows) + sum(1 for i in added if i is not None and i < rows)


def embedding_module_names(model) -> list[str]:
    """Names of the input embedding and the LM head (e.g. ['model.embed_tokens', 'lm_head'])."""
    wanted = [m for m in (model.get_input_embeddings(), model.get_output_embeddings()) if m is not None]
    names = {id(m): n for n, m in model.named_modules()}
    return list(dict.fromkeys(names[id(m)] for m in wanted if id(m) in names))


def embeddings_tied(model) -> bool:
    head, emb = model.get_output_embeddings(), model.get_input_embeddings()
    return head is not None and head.weight is emb.weight


def modules_to_save(cfg, model, new_tokens: int) -> list[str]:
    """Modules trained in full and saved with the adapter: train.modules_to_save if set, else
    the input embedding and LM head when the tokenizer has tokens the model had no row for."""
    if cfg.modules_to_save:
        return list(cfg.modules_to_save)
    return embedding_module_names(model) if new_tokens else []


def lora_config(cfg, model, save: list[str] | tuple = ()):
    """peft LoraConfig from the train section; 'all-linear' lets peft find every linear layer.

    `save`: modules_to_save. With tied embeddings (one matrix for input and LM head) peft's
    ensure_weight_tying keeps the trained copies tied too: one trainable matrix, used on both
    sides, so a merged export is still a correctly tied model."""
    from peft import LoraConfig

    targets = cfg.target_modules
    if targets != "all-linear":
        targets = [t.strip() for t in targets.split(",") if t.strip()]
    embeddings = embedding_module_names(model)
    tie = bool(save) and embeddings_tied(model) and any(
        e == s or e.endswith("." + s) for s in save for e in embeddings)
    return LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=targets, use_rslora=cfg.use_rslora, use_dora=cfg.use_dora,
                      modules_to_save=list(save) or None, ensure_weight_tying=tie, task_type="CAUSAL_LM")


def attach_lora(model, cfg, save: list[str] | tuple = ()):
    """The model with LoRA adapters; `save` lists modules trained in full and saved with them."""
    from peft import get_peft_model
    from peft.utils import ModulesToSaveWrapper
    try:
        peft_model = get_peft_model(model, lora_config(cfg, model, save))
    except ValueError as e:
        names = sorted({n.split(".")[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)})
        raise ModelError(f"LoRA target_modules={cfg.target_modules!r} match nothing in the model "
                         f"({str(e).splitlines()[0][:120]}); linear layers are: {', '.join(names)}") from None
    wrapped = [n for n, m in peft_model.named_modules() if isinstance(m, ModulesToSaveWrapper)]
    unmatched = [s for s in save if not any(n == s or n.endswith("." + s) for n in wrapped)]
    if unmatched:  # peft ignores them silently
        raise ModelError(f"train.modules_to_save: {', '.join(unmatched)} match no module of the model "
                         f"(its embeddings are {', '.join(embedding_module_names(model))})")
    return peft_model


def resolve_device(name: str = "auto") -> torch.device:
    """The torch device for a recipe's `device`: 'auto' takes a CUDA GPU, else Apple's MPS (a
    Mac's GPU), else the CPU. An explicit device this machine lacks is a one-line ModelError
    rather than a crash deep inside the first forward pass."""
    cuda, mps = torch.cuda.is_available(), torch.backends.mps.is_available()
    if name == "auto":
        return torch.device("cuda" if cuda else "mps" if mps else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not cuda:
        raise ModelError(f"device={name}: no CUDA GPU is available here (torch {torch.__version__}); "
                         f"use device=auto or device=cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ModelError(f"device={name}: this machine has {torch.cuda.device_count()} CUDA GPU(s), "
                         f"numbered from 0")
    if device.type == "mps" and not mps:
        raise ModelError(f"device={name}: Apple MPS is not available here; use device=auto or device=cpu")
    if device.type == "cuda" and device.index is not None:
        torch.cuda.set_device(device)  # Accelerate and bare "cuda" tensors then land on GPU N
    return device


def load_adapter(base: str, adapter: str | None = None, *, trainable: bool = False, merged: bool = False,
                 device: str | None = "auto"):
    """(model, tokenizer): the base model with a LoRA adapter (a local directory or a Hub id), or
    the base alone (adapter None) - the one loader every stage uses (eval, chat, export, RL).

    Every adapter goes through the same checks before its weights are read: `check_adapter`
    (resolved to a local folder, safetensors weights only), then, once the base is loaded and given
    a row for every token of the adapter's tokenizer (`fit_vocab`), `check_adapter_fits` (shapes
    and vocabulary, the message naming what differs) and `check_recorded_base` (trained on this
    base, not on another of the same shapes). `trainable`: the adapter's weights train (RL);
    else the model is put in eval mode. `merged`: the adapter folded into the base.
    `device`: see resolve_device (checked before loading, so an unavailable one fails at once);
    None leaves the model on the CPU for the caller to place (Accelerate's prepare)."""
    target = resolve_device(device) if device is not None else None
    if adapter:
        adapter = check_adapter(base, adapter, recorded=False)
    tokenizer = adapter_tokenizer(base, adapter)
    model = load_model(base)
    # an adapter trained with added tokens carries embeddings of len(tokenizer) rows (its
    # modules_to_save); the base gets as many rows before the adapter is attached
    fit_vocab(model, tokenizer)
    if adapter:
        from peft import PeftModel  # heavy: only adapters need it
        check_adapter_fits(model, base, adapter, tokenizer)
        check_recorded_base(base, adapter)
        try:
            model = PeftModel.from_pretrained(model, adapter, is_trainable=trainable)
        except (OSError, ValueError, RuntimeError) as e:  # RuntimeError: weight shapes of another base
            raise ModelError(f"cannot load adapter {adapter} on {base}: {str(e).splitlines()[0][:200]}") from None
        if merged:
            model = model.merge_and_unload()
    if target is not None:
        model.to(target)
    if not trainable:
        model.eval()
    return model, tokenizer


def check_adapter(base: str, adapter: str, recorded: bool = True) -> str:
    """The adapter's local folder, once it is known to be safe to load on `base`, before any model
    loads: resolved (resolve_adapter), its weights in safetensors (check_adapter_weights), an
    adapter at all (adapter_config.json) and, with `recorded`, trained on this base
    (check_recorded_base). RL calls it before it starts processes; load_adapter runs it too."""
    adapter = resolve_adapter(adapter)
    check_adapter_weights(adapter)
    if not os.path.isfile(os.path.join(adapter, "adapter_config.json")):
        raise ModelError(f"no LoRA adapter in {adapter} (expected adapter_config.json)")
    if recorded:
        check_recorded_base(base, adapter)
    return adapter


def check_recorded_base(base: str, adapter: str) -> None:
    """An adapter trained on another base than `base` is one ModelError. The same base: the path
    the adapter records (recorded_base), the same path spelled otherwise, another folder with the
    same files (a copied run directory), or any folder when the recorded path is gone (a moved
    run; check_adapter_fits then judges it by shape and vocabulary). No record: nothing to check."""
    trained_on = recorded_base(adapter)
    if not trained_on or trained_on == base or os.path.realpath(trained_on) == os.path.realpath(base):
        return
    if os.path.isdir(trained_on) and os.path.isdir(base) and same_model_files(trained_on, base):
        return
    if looks_like_path(trained_on) and not os.path.exists(trained_on) and os.path.isdir(base):
        return
    raise ModelError(f"adapter {adapter} was trained on {trained_on}, not on {base}")


def same_model_files(a: str, b: str) -> bool:
    """Two model directories holding the same config, tokenizer and weight files, byte for byte."""
    def files(d):
        return sorted(f for f in os.listdir(d) if f.endswith((".json", ".safetensors", ".txt", ".model")))
    names = files(a)
    return names == files(b) and all(filecmp.cmp(os.path.join(a, f), os.path.join(b, f), shallow=False) for f in names)


def check_adapter_weights(adapter: str) -> None:
    """Safetensors only: a pickled adapter (adapter_model.bin) is refused before anything reads it,
    since unpickling a file from the internet can run its code (torch's weights_only would refuse
    it too, but with a traceback)."""
    if os.path.isfile(os.path.join(adapter, "adapter_model.safetensors")):
        return
    if os.path.isfile(os.path.join(adapter, "adapter_model.bin")):
        raise ModelError(f"adapter {adapter} holds its weights as a pickle (adapter_model.bin), which reasonlm "
                         f"does not load: save it with safe_serialization=True (adapter_model.safetensors)")
    raise ModelError(f"no adapter weights in {adapter} (expected adapter_model.safetensors)")


def resolve_adapter(adapter: str) -> str:
    """The local directory of a LoRA adapter: the directory itself, or a Hub adapter id's snapshot
    (downloaded, or from the cache when offline); a missing one is the same one line as a model."""
    if os.path.isdir(adapter):
        return adapter
    if looks_like_path(adapter):
        raise ModelError(_load_error(adapter, FileNotFoundError(adapter), "adapter"))
    from huggingface_hub import snapshot_download  # only Hub adapter ids need it
    try:
        return snapshot_download(adapter)
    except (OSError, ValueError) as e:  # offline, no network, unknown or gated repo, malformed id
        raise ModelError(_load_error(adapter, e, "adapter")) from None


def check_adapter_fits(model, model_name: str, adapter: str, tokenizer) -> None:
    """Refuse an adapter made for another base before peft loads it, as one ModelError naming the
    base the adapter records and the one given. Two checks, neither loading a weight:

    - shapes: every tensor in adapter_model.safetensors (read from its header) against the base
      module it attaches to (LoRA A: the layer's inputs, B: its outputs; modules saved in full:
      the same shape). A mismatch is otherwise a page of `size mismatch` from torch.
    - vocabulary: the adapter's own tokenizer must keep every token of the base's at the same id
      (it may add tokens, trained with it). Another vocabulary of the same size fits every shape
      and then decodes garbage.
    """
    from safetensors import safe_open

    recorded = recorded_base(adapter) or "an unrecorded base"
    mismatch = (f"adapter {adapter} was trained for base {recorded}, not {model_name}" if recorded != model_name
                else f"adapter {adapter} does not fit {model_name}, the base it records (was it replaced?)")
    weights = os.path.join(adapter, "adapter_model.safetensors")
    if os.path.isfile(weights):
        shapes = {name: tuple(t.shape) for name, t in model.state_dict().items()}
        with safe_open(weights, framework="pt") as f:
            for key in f.keys():
                problem = _adapter_tensor_mismatch(key, tuple(f.get_slice(key).get_shape()), shapes)
                if problem:
                    raise ModelError(f"{mismatch}: {problem}")
    if os.path.isfile(os.path.join(adapter, "tokenizer_config.json")):
        try:
            base_vocab = load_tokenizer(model_name).get_vocab()
        except ModelError:  # a base without a tokenizer of its own: nothing to compare with
            return
        vocab = tokenizer.get_vocab()
        moved = sum(1 for token, i in base_vocab.items() if vocab.get(token) != i)
        if moved:
            raise ModelError(f"{mismatch}: its tokenizer has another vocabulary ({moved} of the base's "
                             f"{len(base_vocab)} tokens missing or at other ids)")


def _adapter_tensor_mismatch(key: str, shape: tuple, base: dict[str, tuple]) -> str | None:
    """Why the adapter tensor `key` (peft's saved name) cannot attach to a base with parameter
    shapes `base`, or None when it fits (or is not one whose fit the base's shapes decide)."""
    name = key.removeprefix("base_model.model.")
    module, lora, rest = name.partition(".lora_")
    if not lora:  # a module saved in full (modules_to_save): the base's parameter of the same name
        want = base.get(name)
        return f"{name} is {want} in the base, {shape} in the adapter" if want and want != shape else None
    weight = base.get(module + ".weight")
    if weight is None:
        return f"the adapter has LoRA weights for {module}, which the base lacks"
    part = rest.split(".")[0]
    # Linear weights are (out, in); embeddings are (rows, dim)
    if part == "A":
        ok = shape[-1] == weight[-1]
    elif part == "B":
        ok = shape[0] == weight[0]
    elif part == "embedding_A":
        ok = shape[-1] == weight[0]
    elif part == "embedding_B":
        ok = shape[0] == weight[-1]
    else:  # e.g. DoRA's magnitude vector: follows from A and B
        return None
    return None if ok else f"{module} is {weight} in the base, but the adapter's {key} is {shape}"


def set_threads(threads: int, world: int = 1) -> int:
    """`threads` torch threads for this process, or (0) its share of the cores among `world` processes."""
    n = threads or cores_each(world)
    torch.set_num_threads(n)
    return n


def count_parameters(model) -> tuple[int, int]:
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return total, trainable
