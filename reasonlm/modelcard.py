"""Model cards: README.md in every adapter folder and every merged, ONNX or GGUF export, ready for
`hf upload REPO PATH`.

    write_card(directory, kind, base_model, config_text, data_dir, report)   any folder
    adapter_card(adapter_dir, data_dir, report_path)                         an adapter, from its own files

A card is the Hub's front matter (YAML between `---` lines: base_model, library_name, license,
tags, datasets when a Hub dataset was imported, and `model-index` with one result per eval split
when an eval report exists) and a short body: what the model is, its base, the config it was
trained with, where its dataset card is, how to load it, and the eval results by split and by
n_steps. The training stages write it when they save the weights (without results: none exist
yet); the pipeline rewrites it once the adapter's eval report is written, and `export` writes one
with the run's report when there is one.
"""
from __future__ import annotations

import json
import os

import yaml

from reasonlm.config import RunPaths
from reasonlm.outputs import atomic_write

CARD = "README.md"
TAGS = ["reasonlm", "reasoning", "chain-of-thought", "lora"]
LIBRARY = {"adapter": "peft", "full": "transformers", "merged": "transformers", "onnx": "onnx", "gguf": "gguf"}
WHAT = {"adapter": "a LoRA adapter", "full": "a fully fine-tuned model",
        "merged": "a LoRA adapter merged into its base model", "onnx": "a LoRA adapter merged into its base model, "
        "exported as ONNX",
        "gguf": "a LoRA adapter merged into its base model, as one GGUF file for llama.cpp, Ollama and LM Studio"}
DATA_FILES = (".jsonl", ".json", ".csv", ".parquet")
CARD_METRICS = ("accuracy", "step_accuracy", "chain_valid")  # per split, where the report has them


def write_card(directory: str, kind: str, base_model: str, config_text: str | None = None,
               data_dir: str | None = None, report: dict | None = None) -> str:
    """Write `directory`/README.md (atomically) and return its path."""
    if kind not in LIBRARY:
        raise ValueError(f"model card kind must be one of {', '.join(LIBRARY)}, got {kind!r}")
    data_card = os.path.join(data_dir, "README.md") if data_dir else None
    if data_card and not os.path.isfile(data_card):
        data_card = None
    text = front_matter(kind, base_model, directory, data_dir, report) + "\n" + body(
        kind, base_model, directory, config_text, data_card, report)
    path = os.path.join(directory, CARD)
    atomic_write(path, text)
    return path


def adapter_card(adapter_dir: str, data_dir: str | None = None, report_path: str | None = None) -> str:
    """The card of a saved adapter from what its folder holds (adapter_config.json, config.yaml),
    with the eval results of `report_path` if that file exists."""
    return write_card(adapter_dir, "adapter", recorded_base(adapter_dir), read_text(os.path.join(adapter_dir, "config.yaml")),
                      data_dir, read_report(report_path))


def recorded_base(adapter_dir: str) -> str:
    """The base model an adapter records (`base_model_name_or_path` in its adapter_config.json):
    the one reader of it. '' when the adapter records none or has no readable config."""
    try:
        with open(os.path.join(adapter_dir, "adapter_config.json"), encoding="utf-8") as f:
            config = json.load(f)
    except (OSError, ValueError):
        return ""
    return (config.get("base_model_name_or_path") or "") if isinstance(config, dict) else ""


def run_report_path(run_dir: str) -> str | None:
    """The eval report of a training run of the pipeline's layout (<out_dir>/train ->
    <out_dir>/eval/report.json), if the run is one and the report exists."""
    run_dir = os.path.normpath(os.path.abspath(run_dir))
    folder = RunPaths(os.path.dirname(run_dir)).eval_of(os.path.basename(run_dir))
    if folder is None:
        return None
    path = os.path.join(folder, "report.json")
    return path if os.path.isfile(path) else None


def run_data_dir(run_dir: str) -> str:
    """The dataset of a training run of the pipeline's layout (<out_dir>/train -> <out_dir>/data)."""
    return RunPaths(os.path.dirname(os.path.normpath(os.path.abspath(run_dir)))).data


def read_report(path: str | None) -> dict | None:
    if not path or not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


def read_text(path: str) -> str | None:
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        return f.read()


# --- front matter ----------------------------------------------------------------------------
def front_matter(kind: str, base_model: str, directory: str, data_dir: str | None, report: dict | None) -> str:
    meta: dict = {}
    if is_hub_id(base_model):  # the Hub links it; a local path (the offline tiny base) is named in the body
        meta["base_model"] = base_model
    meta.update({"library_name": LIBRARY[kind], "license": "apache-2.0", "pipeline_tag": "text-generation",
                 "tags": list(TAGS)})
    datasets = hub_datasets(data_dir)
    if datasets:
        meta["datasets"] = datasets
    results = model_index_results(report)
    if results:
        meta["model-index"] = [{"name": model_name(directory), "results": results}]
    return "---\n" + yaml.safe_dump(meta, sort_keys=False, width=200) + "---\n"


def model_name(directory: str) -> str:
    """A readable name: the run and what it is ('train-adapter', 'train-merged')."""
    path = os.path.normpath(os.path.abspath(directory))
    name = os.path.basename(path).removesuffix(".tmp")  # the stages write into <final>.tmp first
    return f"{os.path.basename(os.path.dirname(path))}-{name}"


def model_index_results(report: dict | None) -> list[dict]:
    """One model-index result per eval split: accuracy, and step accuracy and valid chains where
    the report has them (a direct-answer model or answer-only problems have no step metrics)."""
    results = []
    for split, block in ((report or {}).get("splits") or {}).items():
        metrics = [{"type": m, "value": block[m], "name": m.replace("_", " ")}
                   for m in CARD_METRICS if isinstance(block.get(m), (int, float))]
        if metrics:
            results.append({"task": {"type": "text-generation", "name": "step-by-step reasoning"},
                            "dataset": {"name": split, "type": split},
                            "metrics": metrics})
    return results


def hub_datasets(data_dir: str | None) -> list[str]:
    """Hub dataset ids the data stage imported (records/gsm8k sources whose `path` is a Hub id and
    not a local file), read from the dataset's stats.json; generated data has none."""
    stats = read_report(os.path.join(data_dir, "stats.json")) if data_dir else None
    ids = []
    for source in (stats or {}).get("sources", []):
        path = (source.get("args") or {}).get("path")
        if source.get("kind") == "imported" and isinstance(path, str) and is_hub_id(path):
            ids.append(path)
    return sorted(set(ids))


def is_hub_id(name: str) -> bool:
    """owner/name that is neither a local path nor the name of a data file."""
    parts = name.split("/")
    return (len(parts) == 2 and all(parts) and not name.startswith((".", "~")) and not os.path.exists(name)
            and not parts[1].endswith(DATA_FILES))


# --- body ------------------------------------------------------------------------------------
def body(kind: str, base_model: str, directory: str, config_text: str | None, data_card: str | None,
         report: dict | None) -> str:
    fmt = (yaml.safe_load(config_text) or {}).get("format") if config_text else None
    style = {"cot": "to answer step by step: one checkable step per line, then a final line `#### answer`",
             "direct": "to answer directly with a final line `#### answer` (the no-steps ablation)"}.get(
        fmt, "to answer step by step, one checkable step per line, then a final line `#### answer`")
    lines = [f"# {model_name(directory)}", "",
             f"{WHAT[kind][0].upper() + WHAT[kind][1:]} trained with reasonlm "
             f"{style}. Every step can be checked by the task's checker.", "",
             f"- Base model: `{base_model or 'trained from scratch'}`",
             f"- Dataset card: `{os.path.relpath(data_card, directory)}`" if data_card else
             "- Dataset card: not found next to this run",
             f"- Eval report: suite `{report.get('suite')}`, format `{report.get('format')}`, "
             f"created {report.get('created')}" if report else "- Eval report: none yet (run `reasonlm eval`)", ""]
    lines += loading(kind, base_model)
    if report:
        lines += results_tables(report)
    if config_text:
        lines += ["## Training config", "", "The resolved settings it was trained with (`config.yaml`):", "",
                  "```yaml", config_text.rstrip("\n"), "```", ""]
    return "\n".join(lines)


def loading(kind: str, base_model: str) -> list[str]:
    base = base_model or "BASE"
    if kind == "adapter":
        code = ["from peft import PeftModel", "from transformers import AutoModelForCausalLM, AutoTokenizer", "",
                "tokenizer = AutoTokenizer.from_pretrained(\"PATH_OR_REPO\")",
                f"model = AutoModelForCausalLM.from_pretrained(\"{base}\")",
                "if len(tokenizer) > model.get_input_embeddings().num_embeddings:  # chat tokens added in training",
                "    model.resize_token_embeddings(len(tokenizer))",
                "model = PeftModel.from_pretrained(model, \"PATH_OR_REPO\")"]
        cli = f"reasonlm chat --model {base} --adapter PATH_OR_REPO"
    elif kind == "onnx":
        code = ["from reasonlm.ondevice import OnnxEngine", "", "engine = OnnxEngine(\"PATH\")  # greedy, onnxruntime on CPU"]
        cli = None
    elif kind == "gguf":
        return gguf_loading()
    else:
        code = ["from transformers import AutoModelForCausalLM, AutoTokenizer", "",
                "tokenizer = AutoTokenizer.from_pretrained(\"PATH_OR_REPO\")",
                "model = AutoModelForCausalLM.from_pretrained(\"PATH_OR_REPO\")"]
        cli = "reasonlm chat --model PATH_OR_REPO"
    out = ["## How to load", "", "```python", *code, "```", ""]
    if cli:
        out += ["or chat with it, with every step verified as it streams:", "", "```bash", cli, "```", ""]
    return out + ["Upload: `hf upload USER/NAME PATH`.", ""]


def gguf_loading() -> list[str]:
    """How to run a GGUF export: llama.cpp's command-line tools, Ollama, llama-cpp-python."""
    question = "What is 3 + 4 * 2?"
    return ["## How to run", "",
            "`model.gguf` holds the weights (float32), the tokenizer and the ChatML chat template. With llama.cpp "
            "(greedy decoding, as reasonlm evaluates):", "",
            "```bash", "llama-cli -m model.gguf --temp 0            # chat in the terminal, with the chat template",
            "llama-server -m model.gguf --temp 0         # OpenAI-compatible API on http://127.0.0.1:8080/v1",
            "llama-quantize model.gguf model-q8_0.gguf Q8_0   # a smaller file (answers may change)", "```", "",
            "With Ollama, save this as `Modelfile` next to `model.gguf`:", "",
            "```", "FROM ./model.gguf",
            'TEMPLATE """{{ range .Messages }}<|im_start|>{{ .Role }}',
            "{{ .Content }}<|im_end|>", '{{ end }}<|im_start|>assistant', '"""',
            "PARAMETER stop <|im_end|>", "PARAMETER temperature 0", "```", "",
            "```bash", "ollama create reasonlm -f Modelfile", f"ollama run reasonlm \"{question}\"", "```", "",
            "From Python (`pip install llama-cpp-python`):", "",
            "```python", "from llama_cpp import Llama", "",
            "llm = Llama(model_path=\"model.gguf\", verbose=False)",
            f"reply = llm.create_chat_completion([{{\"role\": \"user\", \"content\": \"{question}\"}}], temperature=0)",
            "print(reply[\"choices\"][0][\"message\"][\"content\"])", "```", "",
            "Upload: `hf upload USER/NAME PATH`.", ""]


def results_tables(report: dict) -> list[str]:
    splits = report.get("splits") or {}
    lines = ["## Results", "", "| split | problems | accuracy | step accuracy | valid chains |", "|---|---|---|---|---|"]
    for split, block in splits.items():
        lines.append(f"| {split} | {block.get('n', '')} | {pct(block.get('accuracy'))} | "
                     f"{pct(block.get('step_accuracy'))} | {pct(block.get('chain_valid'))} |")
    lines.append("")
    by_steps = report.get("by_steps") or {}
    if by_steps:
        lines += ["Accuracy by the number of steps a problem needs:", "", "| n_steps | accuracy |", "|---|---|",
                  *[f"| {k} | {pct(v)} |" for k, v in sorted(by_steps.items(), key=lambda kv: int(kv[0]))], ""]
    return lines


def pct(value) -> str:
    return f"{100 * value:.1f}%" if isinstance(value, (int, float)) else "–"
