#!/usr/bin/env bash
# CPU vs CUDA check of updelta on a GPU machine (at most ~5 minutes): planted-case correctness, 0.5B-pair diff
# throughput vs a plain read, --spectral full on a 125M pair. Expects Python 3.12 with torch, safetensors,
# transformers and pandas installed; fetches nothing (the pairs are generated in a temporary folder).
#   bash benchmarks/gpu_check.sh                # on the GPU machine
#   bash benchmarks/gpu_check.sh --cpu-dry-run  # anywhere: CPU parts only, small pairs (exits 0 when they pass)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if ! "$PY" -c "import updelta" 2>/dev/null; then
  "$PY" -m pip install -q --no-deps --no-build-isolation -e . || {
    echo "gpu_check: editable install failed; running from the source tree" >&2; export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"; }
fi
export OMP_WAIT_POLICY=PASSIVE UPDELTA_PROGRESS=0
exec timeout 300 "$PY" benchmarks/gpu_check.py "$@"
