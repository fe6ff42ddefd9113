# riskmesh — every command a user or CI needs. `make demo` and `make test` work on a fresh machine.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv lock proto proto-check pki demo test lint bench bench-quick bench-large reliability demo-hosts clean clients-ts browser container-tools image test-containers

venv: $(STAMP)

# Developers get everything: the runtime set and the dev/test/bench tools (one lock, hashed).
$(STAMP): requirements-dev.lock pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet --no-deps --require-hashes -r requirements-dev.lock
	$(BIN)/pip install --quiet --no-deps --no-build-isolation -e .
	$(MAKE) --no-print-directory proto
	touch $(STAMP)

# The lock files, with hashes, from pyproject.toml (uv, itself a locked dev tool):
#   requirements.lock        runtime dependencies only: what the image installs
#   requirements-dev.lock    runtime + the `dev` extra, same versions: what `make venv` installs
#   requirements-build.lock  pip and the [build-system] requires: what builds the image's wheel
# Existing pins are kept unless pyproject.toml needs otherwise; UPGRADE=1 takes the newest.
UV_COMPILE = $(BIN)/uv pip compile --quiet --python-version 3.11 --generate-hashes --custom-compile-command "make lock" $(if $(UPGRADE),--upgrade)
lock: venv
	test -x $(BIN)/uv || $(BIN)/pip install --quiet uv
	$(UV_COMPILE) pyproject.toml -o requirements.lock
	$(UV_COMPILE) pyproject.toml --extra dev -c requirements.lock -o requirements-dev.lock
	$(BIN)/python -c 'import tomllib; print("pip", *tomllib.load(open("pyproject.toml", "rb"))["build-system"]["requires"], sep="\n")' \
	  | $(UV_COMPILE) - -o requirements-build.lock

# Regenerate riskmesh/v1 (Python + .pyi) from proto/ — the one source of the wire API.
proto:
	$(BIN)/python -m services.tools.protogen

# TypeScript client (clients/typescript): locked npm dependencies, then src/gen generated
# from proto/ (ts-proto run by buf, both locked dev dependencies) and compiled into dist/.
TS_CLIENT := clients/typescript
TS_INSTALLED := $(TS_CLIENT)/node_modules/.installed
TS_BUILT := $(TS_CLIENT)/dist/.built

clients-ts: $(TS_BUILT)

$(TS_INSTALLED): $(TS_CLIENT)/package.json $(TS_CLIENT)/package-lock.json
	cd $(TS_CLIENT) && npm ci --ignore-scripts --no-audit --no-fund
	touch $@

$(TS_BUILT): $(TS_INSTALLED) buf.yaml $(wildcard proto/riskmesh/v1/*.proto) $(TS_CLIENT)/buf.gen.yaml $(TS_CLIENT)/tsconfig.json $(TS_CLIENT)/scripts/generate.mjs $(wildcard $(TS_CLIENT)/src/*.ts)
	cd $(TS_CLIENT) && npm run --silent build
	touch $@

pki: venv
	$(BIN)/riskmesh pki init --out .riskmesh/pki

demo: venv
	$(BIN)/riskmesh demo

# The console's browser tests (tests/e2e/test_console_*.py) drive Debian's chromium
# through Playwright: no browser download, the system package instead.
CHROMIUM := /usr/bin/chromium
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

browser: $(CHROMIUM)

$(CHROMIUM):
	$(SUDO) apt-get update -qq
	DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq chromium

test: lint clients-ts $(CHROMIUM) container-tools
	$(BIN)/python -m pytest -q tests

# Containers (podman + runc, from Debian when missing): the runtime image, then every server
# hardened from it and the three overlays under `podman kube play` with a whole study
# (tests/containers, also part of `make test`).
container-tools: venv
	$(BIN)/python -m services.tools.containers tools

image: venv container-tools
	$(BIN)/python -m services.tools.containers image

test-containers: venv container-tools
	$(BIN)/python -m pytest -q tests/containers

# Layering (import-linter contracts in pyproject.toml), style (ruff), types (mypy, strict on
# the pure cores and the plumbing), the wire API (buf lint) and stale generated code.
MYPY_STRICT := services/join/core services/lasso/core services/lasso/mpc services/mesh services/study
lint: venv
	$(BIN)/lint-imports
	$(BIN)/ruff check services riskmesh tests clients/python
	$(BIN)/ruff format --check services riskmesh tests clients/python
	$(BIN)/mypy $(MYPY_STRICT)
	$(BIN)/buf lint
	$(BIN)/python -m services.tools.protogen --check

# Each organisation in its own Linux network namespace (root), LATENCY_MS apart one way.
LATENCY_MS ?= 20
demo-hosts: venv
	$(BIN)/riskmesh demo-hosts --latency-ms $(LATENCY_MS)

# The benchmark sweep (services/bench/sweep.py): bench/results.csv, figure4.png, README.md.
bench: venv
	$(BIN)/riskmesh bench --sweep full --out bench

bench-quick: venv
	$(BIN)/riskmesh bench --sweep quick --out bench-quick

# One whole study at 1,000,000 rows per owner (too long for `make bench`: the join alone took
# ~30 min under load); `make bench` then includes it in bench/README.md and figure4.png.
bench-large: venv
	$(BIN)/riskmesh bench --sweep large --out bench/large
	if [ -f bench/sweep-info.json ]; then $(BIN)/riskmesh bench --sweep render --out bench; fi

# Faults, fuzzed bad input, refusals, leak scan and load against three orgs' processes
# (tests/reliability); prints the summary table and, last, the one-line reliability figure.
reliability: venv
	$(BIN)/python -m services.reliability

clean:
	rm -rf $(VENV) .riskmesh test-artifacts $(TS_CLIENT)/node_modules $(TS_CLIENT)/dist $(TS_CLIENT)/src/gen
