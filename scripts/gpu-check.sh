#!/usr/bin/env bash
# The GPU check: the GSM8K recipe end to end on CUDA, in one command, within 10 minutes.
#
#   scripts/gpu-check.sh            # from the repository root's parent or anywhere
#
# Runs tests/integration/training/test_gsm8k_recipe.py with GLORE_E2E_GPU=1: example-gsm8k.yaml
# with sizes overridden and its own dtype (bfloat16), on the stand-in base model
# (training.standin), trained on the GPU; `glore serve` and `glore eval` on the run. The
# transformers checks always run; the vLLM ones (rollouts on vLLM, serving every role on vLLM)
# run where `vllm` is installed (pip install -e '.[gpu]'), and are reported as skipped otherwise.
# Needs: .venv (make venv, or PYTHON=...), a CUDA device, GSM8K's train.jsonl and test.jsonl in
# ../shared/data/gsm8k or in GLORE_GSM8K_DIR. Prints one line per check; exits non-zero if any fails.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
if ! "$PY" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)'; then
  echo "FAIL  cuda: torch sees no CUDA device"
  exit 1
fi
marks="slow"
if ! "$PY" -c 'import vllm' 2>/dev/null; then
  echo "SKIP  vllm: not installed (pip install -e '.[gpu]'); running the transformers checks only"
  marks="slow and not vllm"
fi
xml=$(mktemp --suffix=.xml)
log=$(mktemp --suffix=.log)
GLORE_E2E_GPU=1 timeout 600 "$PY" -m pytest -p no:cacheprovider -q -s -m "$marks" \
  --junitxml="$xml" tests/integration/training/test_gsm8k_recipe.py >"$log" 2>&1
rc=$?
grep -h "gsm8k e2e timings" "$log" || true
"$PY" - "$xml" <<'PY'
import sys
import xml.etree.ElementTree as ET

for case in ET.parse(sys.argv[1]).getroot().iter("testcase"):
    status = "PASS"
    for child in case:
        if child.tag in ("failure", "error"):
            status = "FAIL"
        elif child.tag == "skipped":
            status = "SKIP"
    print(f"{status:5} {case.get('name')} ({float(case.get('time', 0)):.0f} s)")
PY
[ $rc -eq 0 ] || echo "log: $log (exit $rc)"
exit $rc
