"""Settings: one flat dataclass per stage, loaded strictly from a recipe YAML.

A recipe has one section per stage (`data`, `base`, `train`, `eval`, `chat`) plus a few
top-level keys. Every field has a docstring right under it: that is the documentation.
Unknown keys are an error that names the key and lists the valid ones. Command-line
overrides use dotted paths: `train.lr=1e-3 out_dir=/tmp/run`.
"""
from __future__ import annotations

import dataclasses
import json
import os
import types
import typing
from dataclasses import dataclass, field, fields

import yaml


class ConfigError(ValueError):
    """A recipe problem, reported to the user as one line."""


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
    long rows (README, training benchmarks). On a GPU, flash_attention_2's variable-length path
    does the same job."""
    eval_every: int = 200
    """Steps between validation loss / accuracy sample (0 = only at the end)."""
    eval_samples: int = 64
    """Validation problems generated and scored at each evaluation."""
    early_stop_patience: int = 0
    """Stop after this many evaluations in a row without a better score (0 = never)."""
    tensorboard: bool = False
    """Also write the logged metrics as TensorBoard scalars to <run>/tb (needs `tensorboard`)."""
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


@dataclass
class EvalConfig:
    model: str = ""
    """Base model (Hub id or path); empty = <out_dir>/base."""
    adapter: str = ""
    """LoRA adapter directory; empty = <out_dir>/train/adapter; 'none' evaluates the bare model."""
    data: str = ""
    """Dataset directory; empty = <out_dir>/data."""
    splits: list = field(default_factory=lambda: ["test", "test_ood"])
    """Dataset splits to evaluate."""
    max_problems: int = 0
    """Cap on problems per split (0 = all)."""
    batch_size: int = 64
    """Prompts generated together."""
    max_new_tokens: int = 0
    """Generation budget per problem; 0 = derived from the problem's n_steps."""
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
    args: {...}, steps: [lo, hi], n_per_steps: N} | {gsm8k: FILE} | {reasoning_gym: NAME, size: N, config: {...}};
    optional per source: name, max_problems, exclude_from: DATASET_DIR. Empty = `splits` of `data`."""
    seeds: list = field(default_factory=lambda: [0])
    """Seeds of generated problems (task and reasoning_gym sources): one fresh draw per seed."""
    prompt: str = "chat"
    """'chat' (the model's chat template, as in training) or 'plain' ('Question: ...\nAnswer:')."""
    shots: int = 0
    """Worked exemplars put before each question (0 = zero-shot); taken from outside the evaluated problems."""
    format: str = ""
    """'cot' or 'direct' (how exemplars and budgets are written); empty = the recipe's train.format, else cot."""
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
    budget_scale: float = 2.0
    """With max_new_tokens 0, a problem's budget is budget_scale x its gold solution's tokens + 8."""
    metrics: list = field(default_factory=lambda: ["accuracy", "step_accuracy", "chain_valid", "extraction_failed"])
    """Metrics the CI gate compares against a baseline (overall and per source)."""
    thresholds: dict = field(default_factory=dict)
    """Absolute gate limits, e.g. {accuracy: 0.9, splits.test_ood.accuracy: 0.2}; a bare name means
    the overall value; a minimum, or a maximum for extraction_failed / right_answer_wrong_chain."""
    baseline: str = ""
    """Baseline report or baseline file for the CI gate (`--baseline` on the command line wins)."""
    resume: bool = True
    """Continue an interrupted run from the samples already written in its output folder."""


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


@dataclass
class RLConfig:
    """Reinforcement learning from the task's checker (reasonlm/rl.py). Names follow TRL's GRPOConfig."""
    model: str = ""
    """Base model (Hub id or path); empty = <out_dir>/base."""
    adapter: str = ""
    """LoRA adapter to start from (and to keep the KL to); empty = <out_dir>/train/adapter."""
    task: dict = field(default_factory=dict)
    """Problem source: {name, args} of a generator family; empty = the first generated family of data.tasks."""
    n_steps: list = field(default_factory=lambda: [7, 10])
    """[lo, hi] reasoning steps of the problems drawn (no gold solution is ever trained on)."""
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
    """Optimizer steps on every batch of rollouts (GRPO), or passes over the kept samples (expert iteration)."""
    dynamic_sampling: bool = False
    """Replace groups that carry no signal (every advantage 0) by sampling more problems (DAPO)."""
    max_resamples: int = 2
    """With dynamic_sampling, extra sampling passes per round at most."""
    keep_valid_prefix: bool = True
    """Expert iteration: also train on the lines before the first wrong step of failed samples (no answer line)."""
    mini_batch_size: int = 64
    """Expert iteration: sequences per optimizer step."""
    micro_batch_size: int = 64
    """Sequences per forward/backward pass (memory only; never changes the result)."""
    sample_batch_size: int = 128
    """Rows the sampler decodes together."""
    lr: float = 1e-4
    """Learning rate (AdamW, constant)."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    grad_clip: float = 1.0
    """Max gradient norm (0 disables clipping)."""
    retries: int = 2
    """Times a problem the group did not fully solve comes back to the pool; fully solved ones retire."""
    preflight_problems: int = 16
    """Gold solutions (and corrupted copies) scored before the first round; every gold must score exactly 1."""
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

    def __post_init__(self):
        checks = [
            (self.algorithm in ("grpo", "expert_iteration"), f"rl.algorithm must be grpo or expert_iteration, got {self.algorithm!r}"),
            (self.reward in ("outcome", "process"), f"rl.reward must be outcome or process, got {self.reward!r}"),
            (self.loss_type in ("grpo", "dr_grpo", "dapo"), f"rl.loss_type must be grpo, dr_grpo or dapo, got {self.loss_type!r}"),
            (self.num_generations >= 2, f"rl.num_generations must be >= 2 (a group needs others to compare with), got {self.num_generations}"),
            (len(self.n_steps) == 2 and all(isinstance(n, int) for n in self.n_steps) and 1 <= self.n_steps[0] <= self.n_steps[1],
             f"rl.n_steps must be [lo, hi] with 1 <= lo <= hi, got {self.n_steps!r}"),
            (min(self.rounds, self.prompts_per_round, self.max_completion_length, self.num_iterations,
                 self.mini_batch_size, self.micro_batch_size, self.sample_batch_size) >= 1,
             "rl.rounds, prompts_per_round, max_completion_length, num_iterations and the batch sizes must be >= 1"),
            (self.temperature > 0 and 0 < self.top_p <= 1, f"rl.temperature must be > 0 and top_p in (0, 1], got "
                                                          f"{self.temperature} and {self.top_p}"),
            (self.epsilon >= 0 and self.epsilon_high >= 0 and self.beta >= 0, "rl.epsilon, epsilon_high and beta must be >= 0"),
            (self.resume in ("auto", "never"), f"rl.resume must be auto or never, got {self.resume!r}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)


@dataclass
class Recipe:
    out_dir: str = "out/run"
    """Where every stage writes (data/, base/, train/, train-direct/, eval/)."""
    threads: int = 0
    """torch threads per process (0 = all cores / number of processes)."""
    direct_baseline: bool = True
    """Pipeline also trains and evaluates the same base on direct answers (the ablation)."""
    data: DataConfig = field(default_factory=DataConfig)
    base: BaseConfig = field(default_factory=BaseConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    chat: ChatConfig = field(default_factory=ChatConfig)
    rl: RLConfig | None = None
    """Reinforcement learning after SFT (`reasonlm rl`); absent = no RL stage."""


@dataclass(frozen=True)
class RunPaths:
    """Where every stage of a run reads and writes, under the recipe's out_dir (the one place
    that knows the layout)."""
    out_dir: str

    def _join(self, *parts: str) -> str:
        return os.path.join(self.out_dir, *parts)

    @property
    def data(self) -> str:
        """The dataset the data stage writes."""
        return self._join("data")

    @property
    def base(self) -> str:
        """The base model (and tokenizer) the base stage writes."""
        return self._join("base")

    @property
    def base_run(self) -> str:
        """The base stage's training run (checkpoints, metrics)."""
        return self._join("base-run")

    def train_run(self, name: str = "train") -> str:
        """A training run's directory ('train', 'train-direct', ...)."""
        return self._join(name)

    def adapter(self, name: str = "train") -> str:
        """The adapter a training run writes."""
        return self._join(name, "adapter")

    def eval(self, name: str = "eval") -> str:
        """An eval run's output folder ('eval', 'eval-direct', 'eval-<suite>')."""
        return self._join(name)


# --- loading ---------------------------------------------------------------------------------
def load_recipe(path: str | None, overrides: list[str] = ()) -> Recipe:
    raw: dict = {}
    if path:
        if not os.path.isfile(path):
            raise ConfigError(f"recipe not found: {path}")
        try:
            with open(path) as f:
                raw = yaml.safe_load(f) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: a recipe is a mapping of sections, got {type(raw).__name__}")
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not key=value (e.g. train.lr=1e-3)")
        key, value = item.split("=", 1)
        *parents, leaf = key.split(".")
        node = raw
        for p in parents:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {key!r}: {p!r} is not a section")
        node[leaf] = yaml.safe_load(value) if value else ""
    return build(Recipe, raw, "")


def build(cls, raw: dict, where: str):
    """Dataclass from a dict, rejecting unknown keys and values of the wrong type."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{where or 'recipe'}: expected a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in fields(cls)}
    kwargs = {}
    for key, value in raw.items():
        name = f"{where}.{key}" if where else key
        if key not in known:
            raise ConfigError(f"unknown key {name!r}; valid keys{' in ' + where if where else ''}: {', '.join(sorted(known))}")
        kind = hints[key]
        if typing.get_origin(kind) is types.UnionType:  # an optional section (`rl: RLConfig | None`)
            kind = next(a for a in typing.get_args(kind) if a is not type(None))
        if dataclasses.is_dataclass(kind):
            kwargs[key] = build(kind, value or {}, name)
        else:
            kwargs[key] = coerce(value, kind, name)
    return cls(**kwargs)


def coerce(value, kind, name):
    origin = typing.get_origin(kind) or kind
    if origin is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if origin is float and isinstance(value, str):  # YAML 1.1 reads '1e-3' (no dot) as a string
        try:
            return float(value)
        except ValueError:
            pass
    if origin is str and isinstance(value, bool):  # YAML 1.1 reads a bare no/yes as a bool
        return "yes" if value else "no"
    if origin is str and isinstance(value, (int, float)):
        return str(value)
    if origin in (bool, int, float, str, list, dict) and not isinstance(value, origin):
        raise ConfigError(f"{name}: expected {origin.__name__}, got {value!r}")
    if origin is int and isinstance(value, bool):
        raise ConfigError(f"{name}: expected int, got {value!r}")
    return value


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def save_resolved(cfg, directory: str, name: str = "config.yaml") -> None:
    """Write the resolved settings next to a stage's output (atomically)."""
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, name)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        yaml.safe_dump(json.loads(json.dumps(to_dict(cfg))), f, sort_keys=False)
    os.replace(tmp, path)
