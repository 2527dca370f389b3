#!/bin/bash
# Put a finished grid's evidence under docs/results/NAME: every run's records (no
# checkpoints), the report drawn from those committed records (tables, verdicts, figures),
# and the diagnosis of its ACP-SL runs (needs the checkpoints, so it reads the grid).
#
#   docs/results/collect.sh NAME [GRID_DIR]      # GRID_DIR defaults to runs/NAME
#   DIAGNOSE=0 docs/results/collect.sh NAME      # skip the diagnosis (about 1 min per run)
#
# Afterwards `acpsl report docs/results/NAME/runs --out docs/results/NAME` redraws the
# report from the repository alone, and copying docs/results/NAME/runs to runs/NAME lets
# `acpsl compare` skip those finished runs (a run is finished when summary.json and its
# records are there; no checkpoint is needed for that).
set -euo pipefail
name=$1
grid=${2:-runs/$name}
out=docs/results/$name
bin=${ACPSL:-.venv/bin/acpsl}
[ -f "$grid/compare.json" ] || { echo "$grid is not a grid (no compare.json)" >&2; exit 2; }
mkdir -p "$out/runs"
cp "$grid/compare.json" "$out/runs/"
(cd "$grid" && find . -path ./report -prune -o -type f \
    \( -name records.jsonl -o -name config.toml -o -name run.json -o -name summary.json \
       -o -name partition.json -o -name kept_channels.json -o -name log.txt \) -print) |
while read -r f; do
    mkdir -p "$out/runs/$(dirname "$f")"
    cp "$grid/$f" "$out/runs/$f"
done
"$bin" report "$out/runs" --out "$out" > /dev/null
if [ "${DIAGNOSE:-1}" = 0 ]; then
    :
elif "$bin" diagnose "$grid" --scheme acp --json "$out/diagnose.json" | grep -v "^wrote " > "$out/diagnose.md.tmp"; then
    mv "$out/diagnose.md.tmp" "$out/diagnose.md"
else
    rm -f "$out/diagnose.md.tmp"
fi
echo "collected $grid into $out ($(du -sh "$out/runs" | cut -f1) of records)"
