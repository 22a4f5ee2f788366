# The two commands a new user needs: `make demo` (run everything against the built-in
# Pi stand-in) and `make test`. Each creates .venv by itself on first use.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DURATION ?= 30

.PHONY: demo test test-fast bench up down venv clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip setuptools
	# torch from the CPU-capable default build; open_clip needs torchvision beside it.
	$(BIN)/pip install -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/encoders demo --duration $(DURATION)

test: $(STAMP)
	$(BIN)/python -m pytest -ra

test-fast: $(STAMP)
	$(BIN)/python -m pytest -ra -m 'not slow' tests/unit

bench: $(STAMP)
	$(BIN)/python -m benchmarks

up:
	docker compose up --build

down:
	docker compose down

clean:
	rm -rf $(VENV) build *.egg-info
