VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test bench reliability clean

$(STAMP): pyproject.toml scripts/setup-venv.sh
	sh scripts/setup-venv.sh
	touch $@

demo: $(STAMP)
	$(VENV)/bin/redline

test: $(STAMP)
	$(PY) -m pytest

bench: $(STAMP)
	$(PY) bench/run_all.py

reliability: $(STAMP)
	$(PY) -m tests.reliability.report

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
