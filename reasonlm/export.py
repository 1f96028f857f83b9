"""`reasonlm export RUN`: a training run's adapter as a folder to publish, with a model card:
the adapter alone, merged into its base as a plain model, or merged as ONNX (reasonlm/ondevice.py) or
as GGUF for llama.cpp (reasonlm/gguf.py)."""
from __future__ import annotations

import os
import shutil

from reasonlm import modelcard, outputs
from reasonlm.gguf import export_gguf
from reasonlm.model import ModelError, check_adapter, load_adapter
from reasonlm.modelcard import recorded_base
from reasonlm.ondevice import export_onnx


def export(run_dir: str, merge: bool = False, out: str | None = None, onnx: bool = False, gguf: bool = False) -> str:
    """Export a training run, with a model card (README.md: modelcard.py): with merge, the adapter folded into the base as a plain model that
    `AutoModelForCausalLM.from_pretrained` loads (tokenizer and chat template included); with
    onnx, that merged model as model.onnx + tokenizer (reasonlm/ondevice.py); with gguf, as one
    model.gguf for llama.cpp (reasonlm/gguf.py); without any, the adapter alone (load it with
    `PeftModel.from_pretrained(base, path)`).

    `out` is replaced only if an earlier export wrote it (outputs.py), and never when it is (or
    holds) the adapter or the base the adapter was trained on."""
    if onnx and gguf:
        raise ModelError("export: --onnx and --gguf write different folders; choose one")
    adapter = os.path.join(run_dir, "adapter") if os.path.isdir(os.path.join(run_dir, "adapter")) else run_dir
    adapter = check_adapter("", adapter, recorded=False)  # the base is the one it records
    base_name = recorded_base(adapter) or None
    kind = "onnx" if onnx else "gguf" if gguf else "merged" if merge else None
    out = out or os.path.join(run_dir, kind or "exported-adapter")
    for what, path in (("the adapter", adapter), ("the base model the adapter was trained on", base_name)):
        if path and os.path.exists(path) and _overlap(out, path):
            raise ModelError(f"export --out {out} would write over {what} ({path}); choose another directory")
    outputs.check_replaceable(out, "export")  # refused before the lock: no .<out>.lock left beside a foreign folder
    with outputs.lock(out):
        outputs.check_replaceable(out, "export")  # again, holding it; before the merge, which can take minutes
        tmp = outputs.fresh_temporary(out, "export")
        with outputs.writing(out, tmp):
            if onnx:
                model, tokenizer = load_adapter(base_name, adapter, merged=True, device="cpu")
                export_onnx(model, tokenizer, tmp)
            elif gguf:
                model, tokenizer = load_adapter(base_name, adapter, merged=True, device="cpu")
                export_gguf(model, tokenizer, tmp, modelcard.model_name(tmp))
            elif merge:
                model, tokenizer = load_adapter(base_name, adapter, merged=True)
                model.save_pretrained(tmp, safe_serialization=True)
                tokenizer.save_pretrained(tmp)
            else:
                shutil.copytree(adapter, tmp, dirs_exist_ok=True, ignore=_not_copied(tmp, out))
            # the card, with the run's eval results when the run is one of the pipeline's
            run = os.path.dirname(os.path.abspath(adapter))
            report, data_dir = modelcard.run_report_path(run), modelcard.run_data_dir(run)
            if kind:
                modelcard.write_card(tmp, kind, base_name,
                                     modelcard.read_text(os.path.join(adapter, "config.yaml")), data_dir,
                                     modelcard.read_report(report))
            else:
                modelcard.adapter_card(tmp, data_dir, report)
        outputs.replace(tmp, out, "export")
    what = {"onnx": "ONNX, greedy runner: reasonlm.ondevice.OnnxEngine", "gguf": "GGUF for llama.cpp",
            "merged": "merged model"}.get(kind, "adapter")
    print(f"export: wrote {out} ({what}; base {base_name})")
    return out


def _overlap(out: str, path: str) -> bool:
    """Whether writing `out` would replace `path`: the same directory, or one that holds it."""
    out, path = os.path.realpath(out), os.path.realpath(path)
    return path == out or path.startswith(out + os.sep)


def _not_copied(tmp: str, out: str):
    """copytree's ignore: the adapter's marker (it says "train"; the copy is the export's) and, for
    an export inside the adapter's own folder (the default for `export ADAPTER_DIR`), the export."""
    skip = {os.path.realpath(p) for p in (tmp, out, out + ".old")}
    return lambda d, names: [n for n in names if n == outputs.MARKER or os.path.realpath(os.path.join(d, n)) in skip]
