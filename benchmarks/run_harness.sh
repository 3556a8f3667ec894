#!/usr/bin/env bash
# Side-by-side runs of the shared harness (../shared/bench): this package (`project`) against
# raw Optuna on SQLite and on a journal file, in one process tree, interleaved spec by spec.
#   benchmarks/run_harness.sh                      # W1 throughput + W2 efficiency (2-core sizes)
#   benchmarks/run_harness.sh --workloads W3 --n-jobs W3=16 --trials W3=2000   # any harness flags
#   benchmarks/run_harness.sh --peers project,optuna-journal --workloads W1 \
#       --n-jobs W1=1,2,1,2,1,2,1,2,1,2 --out /tmp/w1.json --md /tmp/w1.md   # five pairs each
#   python benchmarks/harness_ratios.py /tmp/w1.json                         # ratio per pair
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
bench="${BENCH_DIR:-$here/../../shared/bench}"
[ -f "$bench/run.py" ] || { echo "no harness at $bench (set BENCH_DIR)" >&2; exit 2; }
mkdir -p "$here/results"
args=("$@")
if [ ${#args[@]} -eq 0 ]; then
  args=(--workloads W1,W2 --n-jobs W1=1,2 W2=1,2 W2cpu=1,2 --sleep 1.0 --trials W2=32)
fi
# Paths relative to the repository: the harness records its command line in the results.
cd "$here/.."
# Bytecode as an installed package has it (pip compiles at install; Optuna's peers run compiled).
# A checkout run under PYTHONDONTWRITEBYTECODE=1 would otherwise compile the package again at
# every launch (about 0.05-0.08 s more to the first trial on a 2-core machine). Compiled by the
# interpreter that runs the package: bytecode is per Python version.
"${PROJECT_PYTHON:-python3}" -m compileall -q hparam_search >/dev/null
# Defaults first: a --peers, --out or --md given on the command line comes later and wins.
PROJECT_DIR="$(pwd)" python3 "$bench/run.py" --peers project,optuna-sqlite,optuna-journal \
  --out benchmarks/results/harness.json --md benchmarks/results/harness.md "${args[@]}"
