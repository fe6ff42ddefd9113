# riskmesh — every command a user or CI needs. `make demo` and `make test` work on a fresh machine.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv proto proto-check pki demo test lint bench bench-quick reliability demo-hosts clean

venv: $(STAMP)

$(STAMP): requirements.lock pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet --no-deps -r requirements.lock
	$(BIN)/pip install --quiet --no-deps --no-build-isolation -e .
	$(MAKE) --no-print-directory proto
	touch $(STAMP)

# Regenerate riskmesh/v1 (Python + .pyi) from proto/ — the one source of the wire API.
proto:
	$(BIN)/python -m services.mesh.protogen

pki: venv
	$(BIN)/riskmesh pki init --out .riskmesh/pki

demo: venv
	$(BIN)/riskmesh demo

test: venv
	$(BIN)/python -m pytest -q tests

lint: venv
	$(BIN)/buf lint
	$(BIN)/python -m services.mesh.protogen --check

bench: venv
	$(BIN)/riskmesh bench sweep --out bench

bench-quick: venv
	$(BIN)/riskmesh bench sweep --quick --out bench-quick

clean:
	rm -rf $(VENV) .riskmesh test-artifacts
