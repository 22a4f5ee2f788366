# The two commands a new user needs: `make demo` (run everything against the built-in
# Pi stand-in) and `make test`. Each creates .venv by itself on first use.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DURATION ?= 30
TORCH_PIN ?= torch==2.14.1 torchvision==0.29.1

.PHONY: demo test lint test-fast fuzz bench up down logs compose-command web-token venv clean

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

# The pipeline in Docker (docker-compose.yml): built, started in the background, healthy.
# Compose v2 (`docker compose`) where it is installed, else v1 (`docker-compose`).
COMPOSE ?= $(shell docker compose version >/dev/null 2>&1 && echo "docker compose" || echo docker-compose)
# The encoder on the GPU when this machine has an NVIDIA one (GPU=0 or GPU=1 to choose).
GPU ?= $(shell command -v nvidia-smi >/dev/null 2>&1 && echo 1 || echo 0)
COMPOSE_FILES ?= -f docker-compose.yml $(if $(filter 1,$(GPU)),-f docker-compose.gpu.yml)
UP_WAIT ?= 900

# The web viewer's token, made once, kept in .env (compose reads it from there), beside
# whatever else is set there.
web-token:
	@grep -qs '^ENCODERS_WEB_TOKEN=.' .env || { umask 077 && printf 'ENCODERS_WEB_TOKEN=%s\n' \
		"$$($(PYTHON) -c 'import secrets; print(secrets.token_urlsafe(18))')" >> .env; }

up: web-token
	$(COMPOSE) $(COMPOSE_FILES) up --build --detach
	@$(PYTHON) docker/wait_healthy.py --timeout $(UP_WAIT) -- $(COMPOSE) $(COMPOSE_FILES)
	@. ./.env && echo "web viewer: http://localhost:$${ENCODERS_WEB_PORT:-8080}/?token=$$ENCODERS_WEB_TOKEN"
	@echo "logs: make logs; stop: make down"

# The compose command `make up` runs (for scripts and tests that ask compose more).
compose-command:
	@echo $(COMPOSE) $(COMPOSE_FILES)

logs: web-token
	$(COMPOSE) $(COMPOSE_FILES) logs --follow --tail 20

# Stops the pipeline as `encoders stop` does (the cameras end, every frame in flight gets its
# outcome, the recorder stores every record and closes the run: summary.json), then removes
# the containers. Their restart policy is lifted first, so that services leaving after the
# stop are not started again. The volumes (database, runs, keys) stay; `$(COMPOSE) down -v`
# removes them too. The stop's totals print as a table; `make down STOP_FORMAT=json` prints
# them as one JSON line, for scripts (`encoders stop --format json`).
STOP_FORMAT ?= table
down: web-token
	@ids="$$($(COMPOSE) $(COMPOSE_FILES) ps -q)"; [ -z "$$ids" ] || docker update --restart=no $$ids >/dev/null
	-$(COMPOSE) $(COMPOSE_FILES) exec -T metrics encoders stop --timeout 120 --reason "make down" --format $(STOP_FORMAT)
	$(COMPOSE) $(COMPOSE_FILES) down

clean:
	rm -rf $(VENV) build *.egg-info
