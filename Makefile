# mstage: `make demo` and `make test` each install everything they need first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | sha1sum | cut -c1-12)
FAISS  ?= cpu
WS     ?= mstage-workspace

.PHONY: install test test-fast demo lint redis clean

install: $(STAMP) redis

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[$(FAISS),dev]'
	# The tritonserver binary only: its metadata pins numpy<2, which mstage never imports.
	$(BIN)/pip install -q --no-deps nvidia-pytriton==0.7.0
	rm -f $(VENV)/.installed-*
	touch $@

# Feast's Redis online store is tested against a real server on loopback.
redis:
	@command -v redis-server >/dev/null || \
	  { (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server) >/dev/null 2>&1 \
	    || echo "warning: could not install redis-server; Redis tests will be skipped"; }

test: install
	$(BIN)/pytest -q

# Everything except the tests marked slow (training models, starting servers): under a minute.
test-fast: install
	$(BIN)/pytest -q -m "not slow"

lint: install
	$(BIN)/ruff check mstage tests benchmarks

demo: install
	WS=$(WS) PATH=$(abspath $(BIN)):$$PATH ./scripts/demo.sh

clean:
	rm -rf $(WS) .pytest_cache
