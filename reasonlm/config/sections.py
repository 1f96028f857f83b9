"""The settings: one flat dataclass per stage and the Recipe that holds them. Every field has a
docstring right under it (`field_docs` reads them from this file: that is the documentation), and
every dataclass checks its own values in `__post_init__`."""
from __future__ import annotations

import ast
import functools
import inspect
from dataclasses import dataclass, field

from reasonlm.config.checks import (CHECKED_METHODS, DEDUP_MODES, DEVICE, ON_FAIL, PROPOSE, SEARCH_METHODS, TRACKERS,
                                     ConfigError, _above, _at_least, _batch_holds_a_row, _check, _choices,
                                     _is_number, _one_of, _steps_range, _strings)
from reasonlm.example import FORMATS


@dataclass
class DataConfig:
    tasks: list = field(default_factory=lambda: [{"name": "arithmetic", "weight": 1.0, "args": {}}])
    """Sources to mix. A generated family: {name, weight, args (its knobs), steps: [lo, hi] (optional),
    splits: [base, train, ...] (optional: the generated splits it writes to; default all)}.
    An importer (gsm8k, reasoning_gym): {name, args, count (optional cap), into: train | <new eval split>}."""
    train_steps: list = field(default_factory=lambda: [1, 6])
    """[lo, hi] reasoning steps of train/validation/in-distribution test problems."""
    ood_steps: list = field(default_factory=lambda: [7, 8])
    """[lo, hi] steps of the out-of-distribution test split (longer than any training problem)."""
    eval_min_steps: int = 2
    """Fewest steps of a validation/test problem. Single steps are the primitives every chain is
    built from (the base corpus holds all of them), so testing them would measure memory."""
    n_train: int = 20000
    """Training problems."""
    n_validation: int = 500
    """Validation problems (in-distribution; used for validation loss during training)."""
    n_test_per_steps: int = 100
    """Test problems for every value of n_steps, in-distribution and out-of-distribution."""
    base_steps: list = field(default_factory=lambda: [1, 1])
    """[lo, hi] steps of the problems in the base model's pretraining corpus: the primitives the
    chains are built from, but not the multi-step chains that fine-tuning then teaches."""
    n_base: int = 20000
    """Problems in the base pretraining corpus."""
    curriculum: bool = False
    """Order training problems from fewest to most steps instead of shuffling."""
    seed: int = 0
    """Seed of every random choice in the data stage; same seed, same files."""
    on_error: str = "raise"
    """Malformed or unverifiable imported records: 'raise' (error naming file and line) or 'skip' (dropped, counted)."""
    dedup: str = "none"
    """De-duplicate the train split: 'none', 'exact' (identical question text) or 'normalized'
    (case, spacing and punctuation folded). Duplicates of generated problems are replaced by new ones."""
    decontaminate_against: list = field(default_factory=list)
    """Extra eval suites train must not overlap (JSONL/JSON/parquet/txt files or directories of them),
    on top of every eval split, which is always used."""
    ngram_n: int = 8
    """Decontamination: a train question sharing any n-word sequence with an eval question is removed;
    questions shorter than n words (arithmetic) are compared by exact normalized text. 0 = exact only."""
    tokenizer: str = ""
    """Tokenizer (Hub id or path) for token-length statistics in the card; empty = characters and words only."""
    shard_rows: int = 100000
    """Rows per arrow/parquet shard; rows are written as they are generated, so memory stays flat."""
    workers: int = 0
    """Generation processes: 0 = one per core (at most 4) when train+base hold >= 20000 problems, 1 = in-process.
    Every generation job has its own seed, so the files are the same for any number of workers."""

    def __post_init__(self):
        _check(self, "data", lambda v: isinstance(v, list) and v and all(isinstance(t, dict) and "name" in t for t in v),
               "a non-empty list of sources, each a mapping with a 'name'", "tasks")
        _steps_range(self, "data", "train_steps", "ood_steps", "base_steps")
        if self.ood_steps[0] <= self.train_steps[1]:
            raise ConfigError(f"data.ood_steps must be longer than train_steps, got train_steps={self.train_steps} "
                              f"ood_steps={self.ood_steps}")
        _at_least(self, "data", 1, "eval_min_steps", "n_test_per_steps", "shard_rows")
        _at_least(self, "data", 0, "n_train", "n_validation", "n_base", "workers")
        _at_least(self, "data", 0, "ngram_n")  # 0 = exact match only
        _one_of(self, "data", "on_error", ("raise", "skip"))
        _one_of(self, "data", "dedup", DEDUP_MODES)
        _check(self, "data", lambda v: isinstance(v, list) and all(isinstance(p, str) for p in v), "a list of paths",
               "decontaminate_against")


@dataclass
class BaseConfig:
    model: str = "tiny"
    """'tiny' builds a small decoder from scratch and pretrains it on the base corpus; anything
    else is a Hub id or local path of a pretrained model and the base stage just checks it."""
    hidden_size: int = 128
    """Width of the tiny model."""
    num_layers: int = 4
    """Transformer blocks of the tiny model."""
    num_heads: int = 8
    """Attention heads of the tiny model."""
    intermediate_size: int = 512
    """MLP width of the tiny model."""
    max_position: int = 512
    """Longest sequence the tiny model supports."""
    rope_theta: float = 10000.0
    """RoPE base of the tiny model."""
    vocab_size: int = 256
    """Target vocabulary of the locally trained tokenizer (digits are always single tokens)."""
    steps: int = 600
    """Optimizer steps of base pretraining (full fine-tuning of all weights)."""
    batch_tokens: int = 6144
    """Tokens per optimizer step (packed sequences of `seq_len`)."""
    seq_len: int = 192
    """Packed sequence length during pretraining."""
    lr: float = 3e-3
    """Peak learning rate."""
    warmup_steps: int = 50
    """Linear warmup steps before the cosine decay."""
    position_jitter: int = 0
    """Random prompt-to-completion position shift in pretraining (see train.position_jitter)."""
    packed_attention: bool = False
    """Variable-length attention over packed examples in pretraining (see train.packed_attention)."""
    weight_decay: float = 0.01
    """AdamW weight decay."""
    seed: int = 0
    """Initialisation and data-order seed."""

    def __post_init__(self):
        _check(self, "base", lambda v: bool(v), "'tiny' or a Hub id or path", "model")
        _at_least(self, "base", 1, "hidden_size", "num_layers", "num_heads", "intermediate_size", "max_position",
                  "vocab_size", "steps", "batch_tokens", "seq_len")
        if self.hidden_size % self.num_heads or (self.hidden_size // self.num_heads) % 2:
            # RoPE rotates pairs of dimensions, so every head needs an even width
            raise ConfigError(f"base.hidden_size must split over base.num_heads into heads of even width, got "
                              f"hidden_size={self.hidden_size} num_heads={self.num_heads}")
        _above(self, "base", 0, "rope_theta")
        _batch_holds_a_row(self, "base")
        _at_least(self, "base", 0, "lr", "warmup_steps", "position_jitter", "weight_decay")


@dataclass
class TrainConfig:
    model: str = ""
    """Base model: Hub id or local path; empty means the base stage's output (<out_dir>/base)."""
    data: str = ""
    """Dataset directory written by the data stage; empty means <out_dir>/data."""
    format: str = "cot"
    """'cot' trains on step-by-step solutions; 'direct' on the final answer only (the ablation)."""
    full_finetune: bool = False
    """Train every weight instead of a LoRA adapter."""
    lora_r: int = 32
    """LoRA rank."""
    lora_alpha: int = 64
    """LoRA scaling numerator (scale = alpha / r, or alpha / sqrt(r) with rslora)."""
    lora_dropout: float = 0.0
    """Dropout on the LoRA branch."""
    target_modules: str = "all-linear"
    """Modules that get adapters: 'all-linear' or a comma-separated list of module names."""
    use_rslora: bool = False
    """Rank-stabilised LoRA scaling."""
    use_dora: bool = False
    """Weight-decomposed LoRA (DoRA)."""
    modules_to_save: list = field(default_factory=list)
    """Modules trained in full and saved with the adapter; empty = input embedding + LM head only if the tokenizer gained tokens."""
    steps: int = 800
    """Optimizer steps."""
    batch_tokens: int = 6144
    """Tokens per optimizer step, summed over processes and accumulation (the global batch)."""
    seq_len: int = 192
    """Packed sequence length; longer examples are dropped and counted (see `too_long`)."""
    position_jitter: int = 0
    """Largest random shift (0 = off) between the position ids of a prompt and its completion
    in training. The model then cannot locate question tokens by exact distance and learns to
    find them by content, which is what carries over to longer problems than any trained
    (in the spirit of randomized positions, Ruoss et al. 2023). Inference uses shift 0."""
    line_jitter: bool = False
    """With position_jitter: also add a fresh random 0..position_jitter shift after every line
    break of the completion, so a step cannot locate its operand by its distance from the
    start of the answer (inference uses shift 0 everywhere)."""
    too_long: str = "drop"
    """What to do with an example longer than seq_len: 'drop' (counted, warned) or 'error'."""
    grad_accum: int = 1
    """Micro-batches per optimizer step (the global batch stays batch_tokens)."""
    lr: float = 2e-3
    """Peak learning rate."""
    schedule: str = "cosine"
    """'cosine' or 'linear' decay after warmup."""
    warmup_steps: int = 50
    """Linear warmup steps."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    grad_clip: float = 1.0
    """Max gradient norm (0 disables clipping)."""
    mixed_precision: str = "no"
    """'no' (fp32), 'bf16' or 'fp16'; passed to Accelerate."""
    compile: bool = False
    """torch.compile the training forward/backward (rows have a fixed shape, so it compiles once;
    the first step pays the compile time; validation and saving use the plain model)."""
    packed_attention: bool = False
    """Attention confined to each packed example by gathering examples into groups of equal
    padded length (train.packed_attention_forward) instead of SDPA with a block-diagonal mask:
    no mask, and no scores computed across examples. The rows' examples then run back to back
    as one sequence without their padding. Same losses; pays off most for short examples in
    long rows (docs/benchmarks.md, training speed). On a GPU, flash_attention_2's variable-length path
    does the same job."""
    eval_every: int = 200
    """Steps between validation loss / accuracy sample (0 = only at the end)."""
    eval_samples: int = 64
    """Validation problems generated and scored at each evaluation."""
    early_stop_patience: int = 0
    """Stop after this many evaluations in a row without a better score (0 = never)."""
    report_to: list = field(default_factory=list)
    """Experiment trackers that also get the logged metrics, through Accelerate: any of tensorboard
    (<run>/tb), wandb, trackio, mlflow (each needs its package). metrics.jsonl and loss.png are always
    written. The base stage's pretraining and eval's headline metrics report to the same trackers."""
    load_in_4bit: bool = False
    """QLoRA: load the frozen base in 4-bit NF4 (bitsandbytes, CUDA only)."""
    save_every: int = 200
    """Steps between checkpoints (0 = none)."""
    keep_last: int = 2
    """Checkpoints kept on disk."""
    resume: str = "auto"
    """'auto' resumes from the newest complete checkpoint in the run directory; 'never' starts over."""
    log_every: int = 20
    """Steps between log lines."""
    seed: int = 0
    """Seed of initialisation of the adapter and of the data order."""

    def __post_init__(self):
        _one_of(self, "train", "format", FORMATS)
        _at_least(self, "train", 1, "lora_r", "steps", "batch_tokens", "seq_len", "grad_accum", "keep_last")
        _above(self, "train", 0, "lora_alpha")
        _batch_holds_a_row(self, "train")
        _check(self, "train", lambda v: _is_number(v) and 0 <= v < 1, "in [0, 1)", "lora_dropout")
        _check(self, "train", lambda v: isinstance(v, str) and v.strip(" ,"), "'all-linear' or module names",
               "target_modules")
        _strings(self, "train", "modules_to_save")
        # lr 0 is allowed: a run that must not move the weights (the early-stopping test uses it)
        _at_least(self, "train", 0, "lr", "warmup_steps", "weight_decay", "grad_clip", "position_jitter",
                  "eval_every", "eval_samples", "early_stop_patience", "save_every", "log_every")
        _one_of(self, "train", "too_long", ("drop", "error"))
        _one_of(self, "train", "schedule", ("cosine", "linear"))
        _one_of(self, "train", "mixed_precision", ("no", "bf16", "fp16"))
        _one_of(self, "train", "resume", ("auto", "never"))
        _check(self, "train", lambda v: isinstance(v, list) and all(t in TRACKERS for t in v) and len(set(v)) == len(v),
               f"a list of distinct trackers from {_choices(TRACKERS)}", "report_to")
        if self.compile and self.packed_attention:  # the groups change every step: the graph would be rebuilt each time
            raise ConfigError("train.compile and train.packed_attention cannot be combined; turn one off")


@dataclass
class SearchConfig:
    """How an answer is decoded (reasonlm/search.py, docs/search.md); the gold answer is never seen."""
    method: str = "greedy"
    """'greedy' (one answer, argmax), 'majority' (k samples, the most common answer), 'best_of_n' (n
    samples, the one whose checked valid prefix is longest, a valid chain first, majority among ties),
    'step_retry' (a line at a time, a line the checker rejects is resampled) or 'step_beam' (a beam over
    lines ranked by valid prefix, then log-probability). The last three need a task that checks steps
    without the gold; answer-only sources allow greedy and majority."""
    k: int = 8
    """majority: samples per problem."""
    n: int = 8
    """best_of_n: samples per problem."""
    temperature: float = 0.7
    """Sampling temperature of majority's and best_of_n's samples, and of every resampled line or beam
    candidate (a line's first try is greedy)."""
    retries: int = 8
    """step_retry: further tries of a rejected line before the search gives up on it."""
    propose: str = "branch"
    """step_retry, how a rejected line's next tries are drawn: 'sample' (the line resampled at
    `temperature`) or 'branch' (the model's next most likely line: at a token of a tried line, the
    model's second choice instead, then greedy to the line's end; the branch whose changed prefix the
    model finds most likely first, so tries go where the model was unsure and none repeats another)."""
    candidates: int = 1
    """step_retry: lines drawn together for each resample; the valid one the model finds most likely is
    kept (1 = one at a time, stopping at the first valid line)."""
    backup: int = 1
    """step_retry: times per problem the search may back up one line (resample the accepted line before
    a line it could not fix, never the same text again)."""
    on_fail: str = "continue"
    """step_retry, a line that cannot be fixed: 'continue' keeps its greedy version and decodes the rest
    greedily without checking (nothing after a broken line can pass); 'stop' ends the answer there."""
    retry_budget: int = 0
    """step_retry: resampled lines per problem at most, over all its lines (0 = no cap beyond retries)."""
    width: int = 2
    """step_beam: beams kept per problem."""
    expand: int = 2
    """step_beam: candidate lines per beam and step (the first greedy, the rest sampled)."""

    def __post_init__(self):
        _one_of(self, "eval.search", "method", SEARCH_METHODS)
        _one_of(self, "eval.search", "on_fail", ON_FAIL)
        _one_of(self, "eval.search", "propose", PROPOSE)
        _at_least(self, "eval.search", 0, "retries", "retry_budget", "backup", "temperature")
        _at_least(self, "eval.search", 1, "k", "n", "candidates", "width", "expand")


@dataclass
class EvalConfig:
    model: str = ""
    """Base model (Hub id or path); empty = <out_dir>/base."""
    adapter: str = ""
    """LoRA adapter directory or Hub id; empty = <out_dir>/train/adapter; 'none' evaluates the bare model."""
    data: str = ""
    """Dataset directory; empty = <out_dir>/data."""
    splits: list = field(default_factory=lambda: ["test", "test_ood"])
    """Dataset splits to evaluate."""
    max_problems: int = 0
    """Cap on problems per split (0 = all)."""
    batch_size: int = 64
    """Prompts generated together."""
    max_new_tokens: int = 0
    """Generation budget per problem; 0 = sized from the question (64 + 16 per number or operator in it +
    3 per token of it), never from the gold solution; either way cut to the model's context."""
    min_accuracy: float = 0.0
    """CI gate: exit non-zero when in-distribution accuracy falls below this."""
    system: str = ""
    """System prompt (empty = none)."""
    name: str = ""
    """Suite name: the report's title and the default output folder (empty = 'eval')."""
    description: str = ""
    """One line on what the suite measures (copied into the report)."""
    sources: list = field(default_factory=list)
    """Problem sources, each one report section: {dataset: DIR, split: S} | {jsonl: FILE} | {task: NAME,
    args: {...}, steps: [lo, hi], n_per_steps: N} | {gsm8k: FILE} | {reasoning_gym: NAME, size: N, config: {...}}
    | {file: FILE_OR_HUB_ID, columns: {question: Q, answer: A, ...}, split: S, config: C} (your own data);
    optional per source: name, max_problems, exclude_from: DATASET_DIR. Empty = `splits` of `data`."""
    seeds: list = field(default_factory=lambda: [0])
    """Seeds of generated problems (task and reasoning_gym sources): one fresh draw per seed."""
    prompt: str = "chat"
    """'chat' (the model's chat template, as in training) or 'plain' ('Question: ...\nAnswer:')."""
    shots: int = 0
    """Worked exemplars put before each question (0 = zero-shot); taken from outside the evaluated problems."""
    format: str = ""
    """'cot' or 'direct' (how exemplars are written); empty = the recipe's train.format, else cot."""
    samples: int = 1
    """Samples per problem; > 1 (with temperature > 0) also reports pass@k and self-consistency maj@k."""
    temperature: float = 0.0
    """Sampling temperature; 0 = greedy."""
    top_p: float = 1.0
    """Nucleus sampling mass."""
    seed: int = 0
    """Sampling seed; every (problem, sample) gets its own stream, so batching, sharding and resuming
    never change a sample."""
    ks: list = field(default_factory=list)
    """k values for pass@k and maj@k (each <= samples); empty = 1, 2, 4, ... up to samples."""
    stop_strings: list = field(default_factory=list)
    """Generation also stops once the output contains one of these (cut from the output); the plain
    prompt always adds 'Question:'."""
    metrics: list = field(default_factory=lambda: ["accuracy", "step_accuracy", "chain_valid", "extraction_failed"])
    """Metrics the CI gate compares against a baseline (overall and per source)."""
    thresholds: dict = field(default_factory=dict)
    """Absolute gate limits, e.g. {accuracy: 0.9, splits.test_ood.accuracy: 0.2}; a bare name means
    the overall value; a minimum, or a maximum for extraction_failed / right_answer_wrong_chain."""
    baseline: str = ""
    """Baseline report or baseline file for the CI gate (`--baseline` on the command line wins)."""
    resume: bool = True
    """Continue an interrupted run from the samples already written in its output folder."""
    too_long: str = "skip"
    """A problem whose prompt leaves no room in the model's context (max_position_embeddings):
    'skip' (left out, counted as too_long per source in the report) or 'error' (stop, naming it)."""
    search: SearchConfig = field(default_factory=SearchConfig)
    """How answers are decoded: greedy (or `samples` at `temperature`) by default; a checker-guided
    search with `method` (docs/search.md); `--search METHOD` on the command line."""
    ladder_per_steps: int = 50
    """Pipeline's length ladder: fresh problems per n_steps in ladder_steps, of the recipe's generated
    family, for every model it trains (greedy, budget from the question); 0 = no ladder."""
    ladder_steps: list = field(default_factory=list)
    """[lo, hi] n_steps of the pipeline's length ladder; empty = 2 to twice data.train_steps' longest."""
    task_files: list = field(default_factory=list)
    """Python files of your own task families (docs/data.md, "A task family in a file of your own")
    that a suite's `task` sources name; relative to the suite or recipe file. Loading one runs its code."""

    def __post_init__(self):
        _one_of(self, "eval", "prompt", ("chat", "plain"))
        _one_of(self, "eval", "too_long", ("skip", "error"))
        _one_of(self, "eval", "format", ("", *FORMATS))
        _at_least(self, "eval", 1, "samples", "batch_size")
        _at_least(self, "eval", 0, "shots", "max_problems", "max_new_tokens", "temperature", "ladder_per_steps")
        _check(self, "eval", lambda v: _is_number(v) and 0 < v <= 1, "in (0, 1]", "top_p")
        _check(self, "eval", lambda v: _is_number(v) and 0 <= v <= 1, "in [0, 1]", "min_accuracy")
        _check(self, "eval", lambda v: isinstance(v, list) and v and all(isinstance(s, int) and not isinstance(s, bool)
                                                                           for s in v),
               "a non-empty list of integers", "seeds")
        _check(self, "eval", lambda v: isinstance(v, list) and all(isinstance(k, int) and 1 <= k <= self.samples for k in v),
               f"a list of k in 1..samples ({self.samples})", "ks")
        _strings(self, "eval", "splits", "stop_strings", "metrics", "task_files")
        if self.ladder_steps:
            _steps_range(self, "eval", "ladder_steps")
        if self.search.method in CHECKED_METHODS:  # sources whose answer-only shape the spec shows (the rest: on load)
            for n, spec in enumerate(self.sources):
                columns = spec.get("columns") if isinstance(spec, dict) and "file" in spec else None
                if isinstance(columns, dict) and not {"steps", "solution"} & set(columns):
                    raise ConfigError(f"eval.search.method={self.search.method!r} needs a source whose steps can be "
                                      f"checked without the gold; sources[{n}] ({spec.get('name') or spec['file']}) is "
                                      "answer-only (its columns map no steps or solution): use greedy or majority")


@dataclass
class ChatConfig:
    temperature: float = 0.0
    """0 means greedy."""
    top_p: float = 1.0
    """Nucleus sampling mass."""
    max_new_tokens: int = 256
    """Longest answer."""
    system: str = ""
    """System prompt (empty = none)."""

    def __post_init__(self):
        _at_least(self, "chat", 0, "temperature")
        _check(self, "chat", lambda v: _is_number(v) and 0 < v <= 1, "in (0, 1]", "top_p")
        _at_least(self, "chat", 1, "max_new_tokens")


@dataclass
class ServeConfig:
    """`reasonlm serve`: the OpenAI-compatible HTTP server and its web chat page (reasonlm/serve.py)."""
    model: str = ""
    """Base model: local path or Hub id."""
    adapter: str = ""
    """LoRA adapter directory or Hub id; empty = the bare model."""
    merged: bool = False
    """Merge the adapter into the base weights before serving."""
    name: str = ""
    """Model name /v1/models lists and answers carry; empty = the adapter's (else the model's) folder name."""
    host: str = "127.0.0.1"
    """Address to bind: 127.0.0.1 serves this machine only; 0.0.0.0 serves every network it is on."""
    port: int = 8000
    """TCP port; 0 = any free port (printed at start)."""
    max_body_bytes: int = 1_000_000
    """Largest request body accepted; a bigger one gets 413 before it is read."""
    max_tokens: int = 512
    """Most new tokens one answer may take: a request's max_tokens above it gets 400; absent = this."""
    max_concurrent: int = 16
    """Requests in flight at once (queued or decoding); one more gets 429 at once rather than waiting."""
    max_batch: int = 16
    """Requests decoded together in one batch (rows of the engine's KV cache)."""
    system: str = ""
    """System prompt put before every chat request that brings none."""

    def __post_init__(self):
        _check(self, "serve", lambda v: isinstance(v, str) and v.strip(), "a model path or Hub id", "model")
        _check(self, "serve", lambda v: isinstance(v, str) and v.strip(), "an address such as 127.0.0.1", "host")
        _check(self, "serve", lambda v: isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 65535,
               "in 0..65535", "port")
        _at_least(self, "serve", 1, "max_tokens", "max_concurrent", "max_batch")
        _at_least(self, "serve", 1024, "max_body_bytes")


@dataclass
class CurriculumConfig:
    """RL's length curriculum (reasonlm/curriculum.py): train on a range of chain lengths, probe the
    longest (the frontier) every rl.probe_every rounds, and move the range up once it is learnt."""
    start: list = field(default_factory=lambda: [7, 9])
    """[lo, hi] chain lengths RL starts on (instead of rl.n_steps)."""
    grow_when: float = 0.9
    """Greedy accuracy at the frontier (the range's hi) on the probe that moves the range up."""
    step: int = 1
    """Lengths the range moves up by at a time (lo and hi together)."""
    max: int = 24
    """Longest chain the range may reach; the model's context and rl.max_completion_length must hold it."""
    probe_problems: int = 50
    """Fixed held-out problems of the frontier length in each probe (the same problems for a length every time)."""
    replay: float = 0.25
    """Fraction of each round's fresh problems drawn from the lengths the range has left behind
    ([start lo, lo - 1]), spread evenly over the rounds, so short chains are not unlearned."""

    def __post_init__(self):
        where = "rl.curriculum"
        _at_least(self, where, 1, "max", "step", "probe_problems")
        _check(self, where, lambda v: (isinstance(v, list) and len(v) == 2 and all(
            isinstance(x, int) and not isinstance(x, bool) for x in v) and 1 <= v[0] <= v[1] <= self.max),
               f"[lo, hi] inside [1, max] (1 <= lo <= hi <= {self.max})", "start")
        _check(self, where, lambda v: _is_number(v) and 0 < v <= 1, "in (0, 1]", "grow_when")
        _check(self, where, lambda v: _is_number(v) and 0 <= v < 1, "in [0, 1)", "replay")


@dataclass
class RLConfig:
    """Reinforcement learning from the task's checker (reasonlm/rl/). Names follow TRL's GRPOConfig."""
    model: str = ""
    """Base model (Hub id or path); empty = base.model (<out_dir>/base for the tiny one)."""
    adapter: str = ""
    """LoRA adapter to start from (and to keep the KL to); empty = <out_dir>/train/adapter."""
    task: dict = field(default_factory=dict)
    """Problem source: {name, args} of a generated family, or of an importer (its problems of n_steps steps,
    question + checker only, e.g. {name: gsm8k, args: {split: train}}); empty = the first generated family of data.tasks."""
    n_steps: list = field(default_factory=lambda: [7, 10])
    """[lo, hi] reasoning steps of the problems drawn (no gold solution is ever trained on)."""
    replay_fraction: float = 0.0
    """Fraction of each round's fresh problems drawn at replay_steps instead: short chains the model
    already solves, whose approved samples expert iteration trains on too, so they are not forgotten."""
    replay_steps: list = field(default_factory=lambda: [2, 6])
    """[lo, hi] steps of the replayed problems."""
    replay_sft: int = 0
    """Expert iteration: this many examples of SFT's own training data (the data stage's train
    split, gold chains SFT already fit) join each round's update, drawn afresh every round, so
    fine-tuning on long chains does not unlearn the short ones. They cost no sampling."""
    algorithm: str = "grpo"
    """'grpo' (group-relative policy gradient) or 'expert_iteration' (fine-tune on checker-approved samples)."""
    reward: str = "process"
    """'outcome' (1 for a right final answer) or 'process' (the checker's verdict on every step, as token credit)."""
    rounds: int = 20
    """Rollout-and-update rounds: a GRPO step (num_iterations updates) or an expert-iteration round."""
    prompts_per_round: int = 16
    """Problems sampled per round (each gets num_generations completions)."""
    num_generations: int = 8
    """Completions per problem (the group); at least 2."""
    temperature: float = 1.0
    """Sampling temperature of the rollouts."""
    top_p: float = 1.0
    """Nucleus mass of the rollouts."""
    max_completion_length: int = 400
    """Token budget of a completion; one that reaches it is truncated."""
    truncation_penalty: float = 0.0
    """Outcome reward of a truncated completion is minus this (0 = scored like a wrong answer)."""
    loss_type: str = "dapo"
    """'grpo' (mean per sequence, then over sequences), 'dr_grpo' (sum / (sequences x max_completion_length))
    or 'dapo' (mean over every completion token of the batch)."""
    scale_rewards: bool = False
    """Divide advantages by their group's std (per step position with process rewards); false = Dr. GRPO."""
    beta: float = 0.0
    """Weight of the KL to the starting policy (k3 estimator); 0 = none (the KL is still logged)."""
    epsilon: float = 0.2
    """Lower clip of the probability ratio (1 - epsilon)."""
    epsilon_high: float = 0.0
    """Upper clip (1 + epsilon_high); 0 = epsilon. DAPO's clip-higher uses 0.28."""
    num_iterations: int = 1
    """Passes over a round's rollouts (GRPO) or kept samples (expert iteration), in mini-batches."""
    dynamic_sampling: bool = False
    """Replace groups that carry no signal (every advantage 0) by sampling more problems (DAPO)."""
    max_resamples: int = 2
    """With dynamic_sampling, extra sampling passes per round at most."""
    keep_valid_prefix: bool = True
    """Expert iteration: also train on the lines before the first wrong step of failed samples (no answer line)."""
    mini_batch_size: int = 64
    """Drawn completions per optimizer step (both algorithms; a pass over a round's batch takes several steps)."""
    micro_batch_size: int = 64
    """Sequences per forward/backward pass (memory only; never changes the result)."""
    packed_attention: bool = False
    """The update forwards a micro-batch's sequences back to back in one row, without padding,
    with attention confined to each (train.packed_attention's path) instead of right-padded rows:
    the same loss without the pad tokens' compute, which is most of it when lengths vary (as
    the kept prefixes of expert iteration do; docs/benchmarks.md). On a GPU, compare with padded
    rows, whose SDPA does not materialise the scores."""
    position_jitter: int = 0
    """The update puts a random 0..position_jitter position gap between each sample's prompt and its
    completion (fixed per sample for a round), as train.position_jitter does in SFT: the update then
    meets longer distances from a line back to the question than its own samples reach. Needs
    packed_attention; positions may pass the model's context, which rotary models compute anyway."""
    sample_batch_size: int = 128
    """Rows the sampler decodes together."""
    lr: float = 1e-4
    """Learning rate (AdamW)."""
    lr_scheduler_type: str = "constant"
    """'constant', or 'linear' (TRL's name): round r of R (from 0) runs at lr x (1 - r / R)."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    grad_clip: float = 1.0
    """Max gradient norm (0 disables clipping)."""
    retries: int = 2
    """Times a problem the group did not fully solve comes back to the pool; fully solved ones retire."""
    preflight_problems: int = 16
    """Gold solutions (and corrupted copies) scored before the first round; every gold must score exactly 1."""
    probe_every: int = 0
    """Every this many rounds, greedy accuracy on a fixed held-out probe set (probe_problems fresh problems
    of each length in probe_steps) goes into metrics.jsonl: accuracy against samples drawn (0 = never)."""
    probe_steps: list = field(default_factory=lambda: [9, 10])
    """[lo, hi] lengths of the probe set."""
    probe_problems: int = 50
    """Problems per probed length."""
    flat_rounds: int = 5
    """Warn when the mean reward has not changed for this many rounds."""
    log_completions: int = 2
    """Groups per round appended to completions.jsonl with their rewards and step verdicts."""
    save_every: int = 10
    """Rounds between checkpoints (0 = none)."""
    keep_last: int = 2
    """Checkpoints kept on disk."""
    resume: str = "auto"
    """'auto' resumes from the newest complete checkpoint; 'never' starts over."""
    seed: int = 0
    """Seed of the problems, the samples and the update."""
    curriculum: CurriculumConfig | None = None
    """A length curriculum, e.g. {start: [9, 12], grow_when: 0.9, max: 16}: the range of lengths moves
    up as the frontier is learnt (needs probe_every and a generated family); absent = rl.n_steps throughout."""
    processes: int = 1
    """CPU processes the stage starts for itself (reasonlm/processes.py), each with its share of the
    cores: samples and updates are shared out, the results equal one process's (docs/rl.md). It
    pays on a CPU because sampling is per-token Python as much as arithmetic (docs/benchmarks.md).
    Ignored when CUDA is available or the stage was launched in several processes already."""

    def __post_init__(self):
        _one_of(self, "rl", "algorithm", ("grpo", "expert_iteration"))
        _one_of(self, "rl", "reward", ("outcome", "process"))
        _one_of(self, "rl", "loss_type", ("grpo", "dr_grpo", "dapo"))
        _one_of(self, "rl", "lr_scheduler_type", ("constant", "linear"))
        _one_of(self, "rl", "resume", ("auto", "never"))
        _check(self, "rl", lambda v: v == {} or (isinstance(v, dict) and isinstance(v.get("name"), str) and v["name"]
                                                  and isinstance(v.get("args") or {}, dict)),
               "{} (the first generated family of data.tasks) or {name: FAMILY, args: {KNOB: VALUE}}", "task")
        _steps_range(self, "rl", "n_steps", "replay_steps", "probe_steps")
        _at_least(self, "rl", 2, "num_generations")  # a group needs others to compare with
        _at_least(self, "rl", 1, "rounds", "prompts_per_round", "max_completion_length", "num_iterations",
                  "mini_batch_size", "micro_batch_size", "sample_batch_size", "preflight_problems", "probe_problems",
                  "keep_last", "processes")
        _at_least(self, "rl", 0, "replay_sft", "truncation_penalty", "beta", "epsilon", "epsilon_high", "max_resamples",
                  "weight_decay", "grad_clip", "retries", "probe_every", "flat_rounds", "log_completions", "save_every",
                  "seed", "position_jitter")
        _above(self, "rl", 0, "lr", "temperature")
        _check(self, "rl", lambda v: _is_number(v) and 0 < v <= 1, "in (0, 1]", "top_p")
        _check(self, "rl", lambda v: _is_number(v) and 0 <= v < 1, "in [0, 1)", "replay_fraction")
        if self.curriculum is not None and not self.probe_every:
            raise ConfigError("rl.curriculum needs rl.probe_every >= 1 (rounds between probes of the frontier), got 0")
        if self.position_jitter and not self.packed_attention:
            raise ConfigError(f"rl.position_jitter is {self.position_jitter}, which needs rl.packed_attention: true "
                              "(padded rows carry no position ids)")
        if self.replay_sft and self.algorithm != "expert_iteration":
            raise ConfigError(f"rl.replay_sft is {self.replay_sft}, which needs algorithm expert_iteration, got "
                              f"rl.algorithm {self.algorithm!r}")


@dataclass
class Recipe:
    out_dir: str = "out/run"
    """Where every stage writes (data/, base/, train/, train-direct/, eval/)."""
    threads: int = 0
    """torch threads per process (0 = all cores / number of processes)."""
    direct_baseline: bool = True
    """Pipeline also trains and evaluates the same base on direct answers (the ablation)."""
    device: str = "auto"
    """Where base, train, eval and chat run: 'auto' (a CUDA GPU, else Apple MPS, else the CPU),
    'cpu', 'cuda', 'cuda:N' or 'mps'. A device this machine lacks is a one-line error.
    Under `accelerate launch` on GPUs every process takes its own GPU: use 'auto' or 'cuda'."""
    data: DataConfig = field(default_factory=DataConfig)
    base: BaseConfig = field(default_factory=BaseConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    chat: ChatConfig = field(default_factory=ChatConfig)
    task_files: list = field(default_factory=list)
    """Python files of your own task families (docs/data.md, "A task family in a file of your own"),
    loaded before any stage runs, so data.tasks, rl.task and eval can name their families; relative
    to the recipe file. Loading one runs its code, as pytest runs a conftest.py: name only files you trust."""
    rl: RLConfig | None = None
    """Reinforcement learning after SFT (`reasonlm rl`); absent = no RL stage."""

    @property
    def all_task_files(self) -> list:
        """Every task file the recipe names (task_files, then eval.task_files): what each stage's
        run(recipe) loads (tasks.load_plugins, once per process) before it names a family."""
        return self.task_files + self.eval.task_files

    def __post_init__(self):
        _check(self, "", lambda v: isinstance(v, str) and v, "a directory", "out_dir")
        _at_least(self, "", 0, "threads")
        _strings(self, "", "task_files")
        _check(self, "", lambda v: isinstance(v, str) and DEVICE.fullmatch(v), "auto, cpu, cuda, cuda:N or mps",
               "device")


def field_docs(cls) -> dict[str, str]:
    """{field: docstring} of a settings dataclass: the string right under each field, read from
    this module's source (Python keeps no docstrings of attributes at run time)."""
    for node in _module_tree().body:
        if isinstance(node, ast.ClassDef) and node.name == cls.__name__:
            return {field_node.target.id: inspect.cleandoc(doc.value.value)
                    for field_node, doc in zip(node.body, node.body[1:])
                    if isinstance(field_node, ast.AnnAssign) and isinstance(field_node.target, ast.Name)
                    and isinstance(doc, ast.Expr) and isinstance(doc.value, ast.Constant)
                    and isinstance(doc.value.value, str)}
    return {}


@functools.cache
def _module_tree() -> ast.Module:
    with open(__file__, encoding="utf-8") as f:
        return ast.parse(f.read())
