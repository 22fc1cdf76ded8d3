# Two entry points for a newcomer: `make demo` and `make test`. Both create .venv on first use.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The CPU wheel of torch; an unpinned torch pulls gigabytes of CUDA packages.
# The `ocr` extra (rapidocr-onnxruntime: onnxruntime, opencv-python and the PP-OCR models, about 120 MB of
# wheels, 300 MB installed) is installed too, so that `make test` (what CI runs) runs the OCR tests.
TORCH_PIN ?= torch==2.13.0

.PHONY: setup demo test test-fast test-lmms-eval lint clean

$(STAMP): pyproject.toml
	@$(PY) -c 'import sys; v=sys.version_info[:2]; sys.exit(0 if (3,10)<=v<=(3,12) else "perceive needs Python 3.10-3.12, found %d.%d: set PY=python3.X" % v)'
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH_PIN)"
	$(BIN)/python -m pip install -q -e ".[dev,ocr,serve,remote,rl,benchmarks,ray,mcp]"
	@touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/perceive demo

# every test, the slow ones (perceive subprocesses: the bad-input CLI corpus, train, scaffold) and
# the import-layer contracts (tests/test_layers.py) included: what CI runs
test: $(STAMP)
	$(BIN)/python -m pytest -q

# the quick loop while developing: leaves out tests marked slow
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

# lmms-eval's CLI with `--model perceive` (tests/test_lmms_eval.py), in a venv of its own: lmms-eval pulls
# about 75 packages that CI does not need; the torch pin in the same pip command keeps the CPU wheel
LMMS_VENV := .venv-lmms
$(LMMS_VENV)/.installed: pyproject.toml
	$(PY) -m venv $(LMMS_VENV)
	$(LMMS_VENV)/bin/python -m pip install -q --upgrade pip
	$(LMMS_VENV)/bin/python -m pip install -q "$(TORCH_PIN)"
	$(LMMS_VENV)/bin/python -m pip install -q -e ".[dev,benchmarks,lmms-eval]" "$(TORCH_PIN)"
	# PyPI's torchvision is a CUDA build that cannot load beside the CPU torch; neither needs it
	$(LMMS_VENV)/bin/python -m pip uninstall -q -y torchvision
	@touch $@

test-lmms-eval: $(LMMS_VENV)/.installed
	$(LMMS_VENV)/bin/python -m pytest -q -m lmms_eval tests/test_lmms_eval.py

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/lint-imports --no-cache

clean:
	rm -rf $(VENV) $(LMMS_VENV) *.egg-info .pytest_cache .hypothesis
