# Two commands on a fresh machine: `make demo` and `make test` (both create .venv when needed).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO_DIR ?= demo_output
GPU_CHECK_DIR ?= gpu_check_output/$(shell date +%Y%m%d-%H%M%S)
GPU_CHECK_ARGS ?=

.PHONY: install lint format test test-fast demo bench gpu-check clean

install: $(STAMP)

$(STAMP): requirements.txt env/constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -r requirements.txt -c env/constraints.txt 2>&1 | tee $(VENV)/install.log
	@# Without NVIDIA drivers, a CUDA build of torch (nvidia-* wheels) still runs on the CPU: it is only a larger
	@# download. Most package indexes serve only the CUDA build on Linux, so warn and go on (README: the CPU build).
	@if ! command -v nvidia-smi >/dev/null 2>&1 && $(PY) -m pip list 2>/dev/null | grep -qiE '^nvidia-'; then \
		echo "warning: the CUDA build of torch was installed on a machine without a GPU; it runs on the CPU" \
		     "(see README, 'Environment', for the smaller CPU build; install log: $(VENV)/install.log)"; fi
	touch $@

# The formatter and the linter (settings in pyproject.toml) fail the run before any test does.
lint: $(STAMP)
	$(PY) -m ruff format --check .
	$(PY) -m ruff check .

# Rewrites the tree in the house style (what `make lint` checks).
format: $(STAMP)
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

test: lint
	$(PY) -m pytest -q

# The in-process tests (tests/e2e/, the subprocess runs, and the slow ones left out).
test-fast: lint
	$(PY) -m pytest -q -m "not slow" --ignore=tests/e2e

demo: $(STAMP)
	$(PY) -m rt1.demo --out $(DEMO_DIR)

bench: $(STAMP)
	for b in benchmarks/bench_*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

# The GPU check needs no install: the venv's python when there is one, else the machine's own python3 (with its
# preinstalled CUDA torch). GPU_CHECK_ARGS=--quick for the CPU mode.
gpu-check:
	@if [ -x $(PY) ]; then P=$(PY); else P=$(PYTHON); fi; \
		echo "$$P benchmarks/gpu_check.py --out $(GPU_CHECK_DIR) $(GPU_CHECK_ARGS)"; \
		$$P benchmarks/gpu_check.py --out $(GPU_CHECK_DIR) $(GPU_CHECK_ARGS)

clean:
	rm -rf $(VENV) $(DEMO_DIR)
