# Two commands do everything on a fresh machine:
#   make demo   - set up .venv and serve the demo project on http://127.0.0.1:8000
#   make test   - set up .venv, start what the tests need (PostgreSQL, Chromium), run ruff + pytest
#
# GPU users: TORCH_SPEC="torch==2.13.0" TORCH_INDEX_URL=https://... make demo
PYTHON ?= python3.11
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX_URL ?=
PYTEST_ARGS ?=

.PHONY: install demo serve test lint bench clean

$(VENV)/.installed: pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found (set PYTHON=...)"; exit 2; }
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q "$(TORCH_SPEC)" $(if $(TORCH_INDEX_URL),--index-url $(TORCH_INDEX_URL))
	$(VENV)/bin/pip install -q -e ".[dev,postgres]"
	touch $@

install: $(VENV)/.installed

demo: install
	$(VENV)/bin/lenslab demo

test: install
	bash scripts/test.sh $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

clean:
	rm -rf $(VENV) .pgtest .pytest_cache .ruff_cache
