"""Model cards: every saved adapter and every merged export carries README.md with the Hub's front
matter (parsed here with yaml and with huggingface_hub, offline), the eval results of the run's
report.json in its model-index, and the pipeline rewrites the adapter's card once eval is done."""
import json
import os

import pytest
import torch
import yaml

from reasonlm import data, modelcard, pipeline, train
from reasonlm.export import export
from reasonlm.config import DataConfig, Recipe, RunPaths, TrainConfig
from tests.helpers import TINY_TASK, tiny_model_and_tokenizer

torch.set_num_threads(1)


def split_card(path):
    """(front matter as a dict, body) of a card."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    assert text.startswith("---\n")
    head, body = text[4:].split("\n---\n", 1)
    return yaml.safe_load(head), body


def report(splits: dict, by_steps: dict | None = None) -> dict:
    return {"suite": "eval", "format": "cot", "created": "2025-01-01T00:00:00", "splits": splits,
            "by_steps": by_steps or {}}


def check_with_hub(path, expected: dict):
    """huggingface_hub reads the card's model-index back as the same (split, metric) -> value."""
    from huggingface_hub import ModelCard
    card = ModelCard.load(path)
    got = {(r.dataset_name, r.metric_type): r.metric_value for r in card.data.eval_results}
    assert got == expected
    assert all(r.task_type == "text-generation" for r in card.data.eval_results)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A pipeline-layout run: <root>/data, <root>/base, <root>/train/adapter (2 training steps)."""
    root = tmp_path_factory.mktemp("card-run")
    cfg = DataConfig(tasks=[{"name": "arithmetic", "args": TINY_TASK}], train_steps=[1, 3], ood_steps=[4, 4],
                     n_train=60, n_validation=4, n_test_per_steps=2, n_base=10, workers=1)
    data.run(Recipe(out_dir=str(root), data=cfg))
    model, tok = tiny_model_and_tokenizer()
    paths = RunPaths(str(root))
    model.save_pretrained(paths.base)
    tok.save_pretrained(paths.base)
    tcfg = TrainConfig(model=paths.base, steps=2, batch_tokens=256, seq_len=128, lr=1e-2, warmup_steps=1,
                       eval_every=0, eval_samples=0, log_every=0, save_every=0, lora_r=4, lora_alpha=8)
    train.run(Recipe(out_dir=str(root), threads=1, train=tcfg), "train")
    return paths


def test_save_weights_writes_an_adapter_card(run):
    meta, body = split_card(os.path.join(run.adapter("train"), "README.md"))
    assert meta["library_name"] == "peft"
    assert "base_model" not in meta and f"Base model: `{run.base}`" in body  # a local path is no Hub id
    assert meta["license"] == "apache-2.0"
    assert meta["tags"] == ["reasonlm", "reasoning", "chain-of-thought", "lora"]
    assert "model-index" not in meta and "datasets" not in meta  # no eval yet; generated data has no Hub id
    assert "`../../data/README.md`" in body  # the dataset card, relative to the adapter
    assert "PeftModel.from_pretrained" in body and "format: cot" in body  # how to load; the config it ran with
    assert "# train-adapter" in body  # named after the final folder, not the temporary one


def test_pipeline_rewrites_the_adapter_card_with_its_eval_results(run):
    os.makedirs(run.eval("eval"), exist_ok=True)
    with open(os.path.join(run.eval("eval"), "report.json"), "w") as f:
        json.dump(report({"test": {"n": 8, "accuracy": 0.625, "step_accuracy": 0.8, "chain_valid": 0.5},
                          "test_ood": {"n": 4, "accuracy": 0.25, "step_accuracy": None, "chain_valid": 0.0}},
                         {"1": 1.0, "2": 0.75, "4": 0.25}), f)
    pipeline.write_model_cards(Recipe(out_dir=run.out_dir, direct_baseline=False), run)
    card = os.path.join(run.adapter("train"), "README.md")
    meta, body = split_card(card)
    results = {r["dataset"]["name"]: {m["type"]: m["value"] for m in r["metrics"]}
               for r in meta["model-index"][0]["results"]}
    assert results == {"test": {"accuracy": 0.625, "step_accuracy": 0.8, "chain_valid": 0.5},
                       "test_ood": {"accuracy": 0.25, "chain_valid": 0.0}}  # no step accuracy: left out, not 0
    assert "| 4 | 25.0% |" in body and "| test | 8 | 62.5% | 80.0% | 50.0% |" in body
    check_with_hub(card, {("test", "accuracy"): 0.625, ("test", "step_accuracy"): 0.8, ("test", "chain_valid"): 0.5,
                          ("test_ood", "accuracy"): 0.25, ("test_ood", "chain_valid"): 0.0})


def test_merged_export_has_a_transformers_card_with_the_run_results(run):
    os.makedirs(run.eval("eval"), exist_ok=True)
    with open(os.path.join(run.eval("eval"), "report.json"), "w") as f:
        json.dump(report({"test": {"n": 8, "accuracy": 0.375, "chain_valid": 0.25}}), f)
    merged = export(run.train_run("train"), merge=True)
    card = os.path.join(merged, "README.md")
    meta, body = split_card(card)
    assert meta["library_name"] == "transformers" and "base_model" not in meta
    assert "AutoModelForCausalLM.from_pretrained" in body and "`../../data/README.md`" in body
    assert "format: cot" in body  # the adapter's training config travels with the export
    check_with_hub(card, {("test", "accuracy"): 0.375, ("test", "chain_valid"): 0.25})
    adapter = export(run.train_run("train"))  # the adapter alone: a peft card with the results
    meta, _ = split_card(os.path.join(adapter, "README.md"))
    assert meta["library_name"] == "peft" and meta["model-index"][0]["results"][0]["metrics"][0]["value"] == 0.375


def test_card_without_report_or_data_and_hub_datasets(tmp_path):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "README.md").write_text("dataset card")
    (data_dir / "stats.json").write_text(json.dumps({"sources": [
        {"kind": "imported", "args": {"path": "openai/gsm8k"}},
        {"kind": "imported", "args": {"path": "mine/problems.jsonl"}},  # a file name, not a Hub id
        {"kind": "generated", "args": {}}]}))
    out = tmp_path / "run" / "onnx"
    out.mkdir(parents=True)
    modelcard.write_card(str(out), "onnx", "org/base", None, str(data_dir), None)
    meta, body = split_card(out / "README.md")
    assert meta["datasets"] == ["openai/gsm8k"] and meta["library_name"] == "onnx" and meta["base_model"] == "org/base"
    assert "OnnxEngine" in body and "none yet" in body and "## Results" not in body
    modelcard.write_card(str(out), "merged", "org/base", None, str(tmp_path / "nowhere"), None)
    _, body = split_card(out / "README.md")
    assert "Dataset card: not found" in body
    with pytest.raises(ValueError, match="kind"):
        modelcard.write_card(str(out), "exl2", "org/base")


def test_run_report_path_follows_the_pipeline_layout(tmp_path):
    paths = RunPaths(str(tmp_path))
    os.makedirs(paths.eval("eval-rl"))
    (tmp_path / "eval-rl" / "report.json").write_text("{}")
    assert modelcard.run_report_path(paths.train_run("rl")) == os.path.join(str(tmp_path), "eval-rl", "report.json")
    assert modelcard.run_report_path(paths.train_run("train")) is None  # no eval/report.json yet
    assert modelcard.run_report_path(str(tmp_path / "elsewhere")) is None
