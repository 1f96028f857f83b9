#!/usr/bin/env bash
# The GPU check: every test marked `gpu` (tests/test_gpu.py) on one CUDA GPU, with no network, in
# under 8 minutes; the numbers each test records go to a summary. See docs/testing.md#the-gpu-check.
#
#   bash eval/gpu_check.sh [WHEEL_DIR] [OUT_DIR]
#
# WHEEL_DIR (or $GPU_CHECK_WHEELS): wheels to install first, offline (pip --no-index), for what the
#   GPU image lacks; a typical one has torch, transformers, peft and accelerate but not `datasets`,
#   and a transformers older than pyproject.toml's floor. Make it on a machine with network, for
#   the GPU machine's Python and platform, leaving torch out (the image's CUDA build stays):
#     pip download -d wheels/ --python-version 3.11 --platform manylinux2014_x86_64 --only-binary=:all: \
#         "transformers>=5.24,<6" "tokenizers>=0.23.1,<0.24" "datasets>=3.0,<6" "accelerate>=1.14,<2" \
#         "peft>=0.19,<1" "safetensors>=0.8,<1" "pyyaml>=6.0.2,<7" "numpy>=2.0,<3" "tqdm>=4.66.3,<5" \
#         "matplotlib>=3.9,<4" "pytest>=8,<10" "hypothesis>=6,<7" setuptools wheel
#   (pip then also downloads their dependencies; copy wheels/ next to the repository.)
# OUT_DIR (or $OUT, else out/gpu-check): where summary.json, summary.md, results.jsonl and the
#   pytest log go.
# Exit status: pytest's (124: timed out), or 3 when torch sees no CUDA GPU (every test skipped).
set -uo pipefail
cd "$(dirname "$0")/.."
wheels=${1:-${GPU_CHECK_WHEELS:-}}
out=${2:-${OUT:-out/gpu-check}}
mkdir -p "$out"
out=$(cd "$out" && pwd)
rm -f "$out/results.jsonl"
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false GPU_CHECK_OUT="$out"
python=${PYTHON:-python3}

if [ -n "$wheels" ]; then  # offline: only what the folder holds; torch stays the image's
  "$python" -m pip install -q --no-index --find-links "$wheels" "transformers>=5.24,<6" "tokenizers>=0.23.1,<0.24" \
    "datasets>=3.0,<6" "accelerate>=1.14,<2" "peft>=0.19,<1" "safetensors>=0.8,<1" "pyyaml>=6.0.2,<7" \
    "numpy>=2.0,<3" "tqdm>=4.66.3,<5" "matplotlib>=3.9,<4" "pytest>=8,<10" "hypothesis>=6,<7" \
    || { echo "gpu_check: installing the wheels in $wheels failed" >&2; exit 2; }
  "$python" -m pip install -q --no-index --no-build-isolation --no-deps -e . \
    || { echo "gpu_check: installing reasonlm (editable, no dependencies) failed" >&2; exit 2; }
fi
"$python" - <<'PY' > "$out/environment.json"
import json, platform, torch, transformers
print(json.dumps({"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
                  "transformers": transformers.__version__, "gpu": torch.cuda.get_device_name(0)
                  if torch.cuda.is_available() else None}))
PY
cat "$out/environment.json"

start=$(date +%s)
timeout 470 "$python" -m pytest -m gpu -x -v -p no:cacheprovider -rA tests/test_gpu.py 2>&1 | tee "$out/pytest.log"
status=${PIPESTATUS[0]}
seconds=$(( $(date +%s) - start ))

"$python" - "$out" "$status" "$seconds" <<'PY'
import json, os, re, sys
out, status, seconds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
log = open(os.path.join(out, "pytest.log")).read()
outcomes = dict(re.findall(r"^(?:tests/test_gpu\.py::)?(\S+) (PASSED|FAILED|SKIPPED|ERROR)", log, re.M))
outcomes.update({t: o for o, t in re.findall(r"^(PASSED|FAILED|SKIPPED|ERROR) tests/test_gpu\.py::(\S+)", log, re.M)})
path = os.path.join(out, "results.jsonl")
results = [json.loads(l) for l in open(path)] if os.path.exists(path) else []
env = json.load(open(os.path.join(out, "environment.json")))
if env["gpu"] is None and status == 0:
    status = 3  # every test skipped: nothing was checked
summary = {"exit_status": status, "timed_out": status == 124, "seconds": seconds,
           "environment": env,
           "tests": outcomes, "results": results}
json.dump(summary, open(os.path.join(out, "summary.json"), "w"), indent=1)
note = " (timed out)" if status == 124 else " (no CUDA GPU: every test skipped)" if status == 3 else ""
lines = [f"# GPU check: exit {status}{note}, {seconds} s",
         "", f"`{json.dumps(summary['environment'])}`", "", "| test | outcome |", "|---|---|"]
lines += [f"| {t} | {o} |" for t, o in sorted(outcomes.items())]
lines += ["", "## Numbers", ""] + [f"- `{json.dumps(r)}`" for r in results]
open(os.path.join(out, "summary.md"), "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
open(os.path.join(out, "exit_status"), "w").write(str(status))
PY
echo "gpu_check: summary in $out/summary.md and $out/summary.json"
exit "$(cat "$out/exit_status")"
