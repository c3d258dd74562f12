#!/usr/bin/env bash
# Fleet-scale benchmarks (GitHub issue 7): `make bench` runs them all and rewrites
# docs/benchmarks.md and bench/results.json; `make bench-quick` (--quick) runs tiny sizes in a
# throwaway database in well under a minute and writes var/bench-quick/results.json instead.
# Other options: --out PATH, --docs PATH, --only P1,P4 (see python -m bench.run --help).
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/services.sh
bash scripts/tools.sh  # wrk, for bench/load_wrk.py
exec .venv/bin/python -m bench.run "$@"
