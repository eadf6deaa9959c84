VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

# `make test-min`: the suite's fast part on the floor versions of the runtime dependencies, in .venv-min
# (scripts/floor_constraints.py pins them). Where no CUDA is present torch is the CPU wheel torch==2.13.0,
# the lowest torch installable here without a multi-GB CUDA download, not its floor (torch>=2.4).
VENV_MIN := .venv-min
STAMP_MIN := $(VENV_MIN)/.installed

.PHONY: demo test test-min bench reliability clean

$(STAMP): pyproject.toml scripts/setup-venv.sh
	sh scripts/setup-venv.sh
	touch $@

$(STAMP_MIN): pyproject.toml scripts/setup-venv.sh scripts/floor_constraints.py
	VENV=$(VENV_MIN) REDLINE_FLOORS=1 sh scripts/setup-venv.sh
	touch $@

demo: $(STAMP)
	$(VENV)/bin/redline

test: $(STAMP)
	$(PY) -m pytest

test-min: $(STAMP_MIN)
	$(VENV_MIN)/bin/python -m pytest -m "not slow and not full"

bench: $(STAMP)
	$(PY) bench/run_all.py

reliability: $(STAMP)
	$(PY) -m tests.reliability.report

clean:
	rm -rf $(VENV) $(VENV_MIN) .pytest_cache build *.egg-info
