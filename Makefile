# The two commands a newcomer needs are `make run` and `make test`; both
# create .venv on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install test lint format run bench bench-driver

install: $(STAMP)

$(STAMP): pyproject.toml requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps -e .
	touch $(STAMP)

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: install
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

test: lint
	$(PY) -m pytest

# make run RUN_ARGS='--base-port 17000' moves every port of the scenario.
run: install
	$(PY) scripts/demo.py $(RUN_ARGS)

# make bench N=10000000 is the soak run (watch the RSS samples stay flat).
N ?= 1000000
bench: install
	$(PY) scripts/bench.py --n $(N)

bench-driver: install
	$(PY) scripts/bench_driver.py
