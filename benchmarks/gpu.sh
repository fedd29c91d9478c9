#!/usr/bin/env bash
# The accelerator cases of the benchmark harness (benchmarks/accelerator.py) on a GPU:
# many-chain ChEES-HMC (method="chees") on eight schools and on hierarchical logistic
# regression with 10,000 tasks against 4-chain hand-written NumPyro NUTS measured in the
# same run (ESS/s, divergences, nested R-hat), and a sharded against an unsharded fit.
#
#   bash benchmarks/gpu.sh            # the full run: about 8 minutes on one H100/H200
#   bash benchmarks/gpu.sh --quick    # a smoke test (seconds; runs on a CPU too)
#
# Installs nothing: it runs the project from this checkout (PYTHONPATH) with the JAX,
# NumPyro, optax, numpy, scipy and pandas already installed (ArviZ is not needed; where
# it is wanted, wheels in shared/wheels/ are installed from there, offline). The JSON goes
# to $OUT/accelerator.json when OUT is set (else ./accelerator.json), the table and the
# log to $OUT/accelerator.log. Extra arguments go to benchmarks/accelerator.py.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$here"
PY="${PYTHON:-python3}"
out="${OUT:-.}"
mkdir -p "$out"
export PYTHONPATH="$here${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
# JAX may take most of the GPU's memory up front; the cases need little
export XLA_PYTHON_CLIENT_PREALLOCATE="${XLA_PYTHON_CLIENT_PREALLOCATE:-false}"

if [ -d shared/wheels ] && ! "$PY" -c "import arviz" 2>/dev/null; then
    "$PY" -m pip install --no-index --find-links shared/wheels arviz >/dev/null 2>&1 || true
fi
"$PY" - <<'EOF'
import jax, numpyro
print(f"jax {jax.__version__} ({jax.default_backend()}: {jax.devices()}), numpyro {numpyro.__version__}")
EOF
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true

# the whole run is bounded (8 minutes less a margin); a row that fails is a row, not the end
timeout "${GPU_BENCH_TIMEOUT:-470}" "$PY" -m benchmarks.accelerator --json \
    --out "$out/accelerator.json" "$@" 2>&1 | tee "$out/accelerator.log"
