# sact_det: every target does all set-up it needs first (scripts/setup_env.sh is idempotent and
# takes about a second once the venv is up to date).
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
export SACT_VENV := $(abspath $(VENV))

.PHONY: setup test demo clean distclean

setup:  ## create .venv with torch, detectron2 and sact_det (editable)
	bash scripts/setup_env.sh

# SACT_DETECTRON2_SRC=/path/to/tree make test: run the suite against the detectron2 source tree in
# /path/to/tree (the folder holding detectron2/, e.g. a git checkout of detectron2 main), put first
# on PYTHONPATH for the tests only. Nothing is installed into .venv and set-up is unchanged.
D2_SRC := $(SACT_DETECTRON2_SRC)
TEST_PYTHONPATH := $(if $(D2_SRC),$(abspath $(D2_SRC))$(if $(PYTHONPATH),:$(PYTHONPATH)),$(PYTHONPATH))
TEST_ENV := $(if $(TEST_PYTHONPATH),PYTHONPATH="$(TEST_PYTHONPATH)")

test: setup  ## run the test suite (CPU); SACT_DETECTRON2_SRC=/path: against that detectron2 tree
	@if [ -n "$(D2_SRC)" ] && [ ! -f "$(D2_SRC)/detectron2/__init__.py" ]; then \
	  echo "make test: SACT_DETECTRON2_SRC=$(D2_SRC) has no detectron2/__init__.py" >&2; exit 2; fi
	@$(TEST_ENV) $(PY) -c 'import detectron2, sact_det.compat as c; s = c.status(); \
	  print("make test: detectron2", s["detectron2"], "|", s["compiled_ops"], "| compat:", \
	        ", ".join(s["patches"]) or "no patches")'
	$(TEST_ENV) $(PY) -m pytest -q tests

demo: setup  ## run the demo on the embedded demo data
	@test -f scripts/demo.sh || { echo "make demo: scripts/demo.sh is missing in this checkout" >&2; exit 1; }
	PATH="$(abspath $(VENV))/bin:$$PATH" bash scripts/demo.sh

clean:  ## remove caches and build artifacts (keeps .venv)
	rm -rf build dist *.egg-info .pytest_cache
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +

distclean: clean  ## also remove .venv
	rm -rf $(VENV)
