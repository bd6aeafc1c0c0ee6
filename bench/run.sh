#!/usr/bin/env bash
# Every comparison of tollgate's speed, side by side in one run on this machine, as one table with ratios:
#
#   bench/run.sh                 webhook, proxy, admission (through kube-apiserver) and node (a real one)
#   bench/run.sh proxy webhook   just those parts, in that order
#
# Each part is bench/<part>.sh: it installs what it needs where missing (Debian packages, cargo tools,
# the cached Kubernetes binaries), builds tollgate in release, measures, and prints table rows as lines
#   ROW<TAB>part<TAB>what<TAB>tollgate<TAB>peer or floor<TAB>ratio<TAB>goal
# among its progress output. Absolute numbers move between runs and machines; the ratios are the point.
# Run it on an otherwise idle machine: two cores are shared by load generator, server and upstream.
set -euo pipefail
cd "$(dirname "$0")/.."
parts=("$@")
((${#parts[@]})) || parts=(webhook proxy admission node)
for part in "${parts[@]}"; do
  [ -x "bench/$part.sh" ] || { echo "bench/run.sh: no part $part (bench/*.sh)" >&2; exit 2; }
done
rows=$(mktemp)
trap 'rm -f "$rows"' EXIT
for part in "${parts[@]}"; do
  echo "== bench/$part.sh" >&2
  "bench/$part.sh" | while IFS= read -r line; do
    if [[ $line == ROW$'\t'* ]]; then echo "$line" >> "$rows"; else echo "$line" >&2; fi
  done
done
echo
echo "$(date -u +%Y-%m-%d), $(nproc) cores, $(uname -r); \`bench/run.sh ${parts[*]}\`"
echo
echo "| | what | tollgate | peer / floor | ratio | goal |"
echo "|---|---|---|---|---|---|"
awk -F'\t' '{ printf "| %s | %s | %s | %s | %s | %s |\n", $2, $3, $4, $5, $6, $7 }' "$rows"
