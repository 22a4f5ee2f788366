# The two commands a new user needs: `make demo` (run everything against the built-in
# Pi stand-in) and `make test`. Each creates .venv by itself on first use.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DURATION ?= 30
TORCH_PIN ?= torch==2.14.1 torchvision==0.29.1

.PHONY: demo test lint test-fast fuzz bench up down venv clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	# A pinned torch/torchvision pair first (open_clip needs both); then the project and its
	# test tools. Override TORCH_PIN to take another build, e.g. a CPU-only index.
	$(BIN)/pip install $(TORCH_PIN)
	$(BIN)/pip install -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/encoders demo --duration $(DURATION)

# The whole code base linted, formatted and type-checked, then every test.
test: lint
	$(BIN)/python -m pytest -ra

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test-fast: $(STAMP)
	$(BIN)/python -m pytest -ra -m 'not slow' tests/unit

# The property-based tests (the wire format, every consumer, what comes from cameras, disks and browsers), 100 times longer.
fuzz: $(STAMP)
	HYPOTHESIS_PROFILE=fuzz $(BIN)/python -m pytest -ra --timeout 0 tests/unit/test_messages_fuzz.py tests/unit/test_consumers_fuzz.py tests/unit/test_input_fuzz.py tests/integration/test_viewer_web_fuzz.py

bench: $(STAMP)
	$(BIN)/python -m benchmarks

up:
	docker compose up --build

down:
	docker compose down

clean:
	rm -rf $(VENV) build *.egg-info
