#!/usr/bin/env bash
# The reverse of publish.sh for a fresh clone: put each published run's results.json and journal back
# into RUN_ROOT/<method>/ where that run has no journal yet, so that `resume=true` replays the journal
# (no checkpoint is needed) and continues the run.
#   results/restore.sh results/<name> RUN_ROOT
set -euo pipefail
src=$1; root=$2
for d in "$src"/*/; do
    m=$(basename "$d")
    [ -d "$d/journal" ] || continue
    if [ -d "$root/$m/journal" ]; then
        echo "$root/$m already has a journal: left as it is"
        continue
    fi
    mkdir -p "$root/$m"
    cp -r "$d/journal" "$root/$m/journal"
    [ -f "$d/results.json" ] && cp "$d/results.json" "$root/$m/"
    echo "restored $d -> $root/$m"
done
