# sact_det: every target does all set-up it needs first (scripts/setup_env.sh is idempotent and
# takes about a second once the venv is up to date).
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
export SACT_VENV := $(abspath $(VENV))

.PHONY: setup test demo clean distclean

setup:  ## create .venv with torch, detectron2 and sact_det (editable)
	bash scripts/setup_env.sh

test: setup  ## run the test suite (CPU)
	$(PY) -m pytest -q tests

demo: setup  ## run the demo on the embedded demo data
	@test -f scripts/demo.sh || { echo "make demo: scripts/demo.sh is missing in this checkout" >&2; exit 1; }
	PATH="$(abspath $(VENV))/bin:$$PATH" bash scripts/demo.sh

clean:  ## remove caches and build artifacts (keeps .venv)
	rm -rf build dist *.egg-info .pytest_cache
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +

distclean: clean  ## also remove .venv
	rm -rf $(VENV)
