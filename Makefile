# Ballast: `make help` lists every target. Everything runs inside .venv, which `make install` creates.
.DEFAULT_GOAL := all

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
BUF := npx --yes @bufbuild/buf@1.75.0
PYTEST_ARGS ?=

.PHONY: all
all: lint proto-check test ## Run what CI runs: lint, the stubs check and every test

.PHONY: help
help: ## List every target with its description
	@grep -hE '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-16s\033[0m %s\n", $$1, $$2}'

$(INSTALLED): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Ballast needs Python 3.11 or newer: set PYTHON=/path/to/python3.11")'
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $@

.PHONY: install
install: $(INSTALLED) ## Create .venv and install Ballast with its development tools

.PHONY: run
run: $(INSTALLED) ## Migrate and start the server (embedded PostgreSQL, NATS and provider simulator unless their settings are set)
	$(BIN)/python -m server migrate
	$(BIN)/python -m server serve

.PHONY: migrate
migrate: $(INSTALLED) ## Apply database migrations up to head
	$(BIN)/python -m server migrate

.PHONY: token
token: $(INSTALLED) ## Print the development bearer token
	@$(BIN)/python -m server token

.PHONY: test
test: $(INSTALLED) ## Run every test (embedded PostgreSQL unless DATABASE_URL is set)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

.PHONY: lint
lint: $(INSTALLED) ## Lint and type-check: ruff, mypy (strict) and the layers' import contract (pyproject.toml)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports --no-cache

.PHONY: format
format: $(INSTALLED) ## Format the Python code and apply safe lint fixes
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

.PHONY: proto
proto: $(INSTALLED) ## Regenerate the Python stubs in gen/ballast from proto/
	$(BIN)/python proto/generate.py

.PHONY: proto-check
proto-check: proto ## Fail if the committed stubs differ from what proto/ generates
	@git diff --exit-code --stat -- gen/ || (echo "gen/ is stale: run 'make proto' and commit the result" && exit 1)
	@test -z "$$(git status --porcelain -- gen/)" || (git status --short -- gen/; echo "gen/ has untracked or missing files: run 'make proto' and commit" && exit 1)

.PHONY: proto-lint
proto-lint: ## Lint proto/ with buf (needs Node.js and npm)
	@command -v npx >/dev/null || (echo "buf runs through npx: install Node.js and npm first" && exit 1)
	cd proto && $(BUF) lint

.PHONY: docs
docs: $(INSTALLED) ## Regenerate docs/state-machines.md from the transition tables
	$(BIN)/python -m server.domain.diagrams

.PHONY: bench
bench: $(INSTALLED) ## Benchmark CreatePayment against a bare grpc.aio + asyncpg ceiling
	$(BIN)/python -m bench

.PHONY: simulator
simulator: $(INSTALLED) ## Run the provider simulator (calm profile)
	$(BIN)/python -m simulator --profile calm

.PHONY: bench-webhooks
bench-webhooks: $(INSTALLED) ## Benchmark webhook intake against a bare verify-and-insert endpoint, and the open breaker
	$(BIN)/python -m bench.webhooks

.PHONY: bench-relay
bench-relay: $(INSTALLED) ## Benchmark the outbox relay against raw claim-and-update and raw JetStream publish
	$(BIN)/python -m bench.relay

.PHONY: bench-recon
bench-recon: $(INSTALLED) ## Benchmark reconciling a 1,000,000-row settlement report against a plain COPY plus one classifying join, and batch-fetch
	$(BIN)/python -m bench.reconciliation

.PHONY: bench-all
bench-all: $(INSTALLED) ## Run every benchmark (about 15 minutes) and write one Markdown table of their ratios to bench/results/
	$(BIN)/python -m bench.all

.PHONY: bench-simulator
bench-simulator: $(INSTALLED) ## Benchmark the simulator's payment creation (calm) against Ballast's CreatePayment
	$(BIN)/python -m bench.simulator

SEED ?= 1

.PHONY: chaos
chaos: $(INSTALLED) ## Run every chaos scenario (seed SEED, default 1) and print a summary table; reports in chaos/results/
	$(BIN)/python -m chaos all --seed $(SEED)

.PHONY: chaos-smoke
chaos-smoke: $(INSTALLED) ## Run the chaos scenarios CI runs (a few minutes)
	$(BIN)/python -m chaos smoke --seed $(SEED)

SHAPE ?= step
USERS ?= 16
DURATION ?= 20
SCENARIO ?=

.PHONY: load
load: $(INSTALLED) ## Locust, headless (SHAPE step|spike|soak, USERS, DURATION, SCENARIO a chaos scenario), then every invariant; results in loadtests/results/
	$(BIN)/python -m loadtests run --shape $(SHAPE) --users $(USERS) --duration $(DURATION) $(if $(SCENARIO),--scenario $(SCENARIO)) --seed $(SEED)

.PHONY: load-ui
load-ui: $(INSTALLED) ## Locust's web UI at http://127.0.0.1:8089 against a world it starts (SCENARIO optional); Ctrl-C ends it and checks the invariants
	$(BIN)/python -m loadtests ui $(if $(SCENARIO),--scenario $(SCENARIO)) --seed $(SEED)

.PHONY: clean
clean: ## Remove the virtual environment and caches (keeps .data)
	rm -rf $(VENV) .pytest_cache .hypothesis build *.egg-info gen/*.egg-info
	find . -name __pycache__ -type d -prune -exec rm -rf {} +

.PHONY: clean-data
clean-data: ## Delete .data (the embedded PostgreSQL data and the development token); stop the server first
	rm -rf .data
