# Two commands on a fresh machine: `make demo` and `make test` (both create .venv when needed).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO_DIR ?= demo_output

.PHONY: install test test-fast demo bench clean

install: $(STAMP)

$(STAMP): requirements.txt env/constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -r requirements.txt -c env/constraints.txt 2>&1 | tee $(VENV)/install.log
	@# On a machine without NVIDIA drivers, a CUDA torch or nvidia-* wheel means the pin went wrong.
	@if ! command -v nvidia-smi >/dev/null 2>&1 && $(PY) -m pip list 2>/dev/null | grep -iE '^nvidia-'; then \
		echo "error: CUDA packages were installed on a machine without a GPU (see $(VENV)/install.log)"; exit 1; fi
	touch $@

test: $(STAMP)
	$(PY) -m pytest -q

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

demo: $(STAMP)
	$(PY) -m rt1.demo --out $(DEMO_DIR)

bench: $(STAMP)
	for b in benchmarks/bench_*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) $(DEMO_DIR)
