#!/usr/bin/env bash
# Copy a finished (or stopped) runner multirun into results/<name>/ without weights or checkpoints,
# with each run's journal (so `python -m betaedit_plugin.run replay results/<name>/<method>` rebuilds
# its edited model and `make reproduce RESUME=true` continues it on a fresh clone), rebuild its
# comparison table and plots, and record the command, the commit and the machine.
#   results/publish.sh RUN_ROOT NAME "COMMAND THAT PRODUCED IT"
set -euo pipefail
src=$1; name=$2; cmd=$3
here=$(cd "$(dirname "$0")/.." && pwd)
dest="$here/results/$name"
mkdir -p "$dest"
for d in "$src"/*/; do
    m=$(basename "$d")
    [ -f "$d/results.json" ] || continue
    mkdir -p "$dest/$m"
    for f in results.json metrics.csv report.md run.log; do
        [ -f "$d/$f" ] && cp "$d/$f" "$dest/$m/"
    done
    cp "$d"/*.png "$dest/$m/" 2>/dev/null || true
    if [ -d "$d/journal" ]; then  # chunks never change once written; the tail is replaced
        mkdir -p "$dest/$m/journal"
        rm -f "$dest/$m/journal/tail.safetensors"
        cp "$d"/journal/*.safetensors "$dest/$m/journal/"
    fi
done
py=${PYTHON:-$here/.venv/bin/python}
(cd "$here" && "$py" -m betaedit_plugin.run compare "$dest"/*/ --out "$dest")
commit=$(git -C "$src" rev-parse HEAD 2>/dev/null || git -C "$here" rev-parse HEAD)
{
    echo "command: $cmd"
    echo "commit: $commit"
    echo "machine: $(uname -m), $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), CPU only"
    echo "published: $(date -u +%Y-%m-%dT%H:%MZ)"
} > "$dest/PROVENANCE.txt"
echo "published $src -> $dest"
