#!/usr/bin/env bash
# Run every benchmark in bench/ (on demand, not part of `make test`); each writes its
# figures to bench/results/<name>.json, quoted in the README. Needs root (cgroups, BPF).
# BENCH="flows probe_cost" limits the run to some of them.
set -uo pipefail
cd "$(dirname "$0")/.."
all=$(ls bench/*.py | xargs -n1 basename | sed 's/\.py$//')
failed=()
for name in ${BENCH:-$all}; do
  printf '\n==> bench/%s.py\n' "$name"
  start=$(date +%s)
  if ! .venv/bin/python "bench/$name.py"; then failed+=("$name"); fi
  printf '    %s took %ss -> bench/results/%s.json\n' "$name" "$(( $(date +%s) - start ))" "$name"
done
if ((${#failed[@]})); then
  echo "benchmarks that failed or missed their goal: ${failed[*]}" >&2
  exit 1
fi
