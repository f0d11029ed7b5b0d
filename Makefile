# The two commands a newcomer needs are `make run` and `make test`; both
# create .venv on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install test lint format run bench bench-driver metrics-ui browser

# The Metrics UI's chart library (Chart.js, pinned in metrics_ui/vendor.py), fetched with npm.
CHART := metrics_ui/static/vendor/chart.umd.js

install: $(STAMP) $(CHART)

$(STAMP): pyproject.toml requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps -e .
	touch $(STAMP)

$(CHART): metrics_ui/vendor.py | $(STAMP)
	$(PY) -m metrics_ui.vendor
	touch $(CHART)

# Debian's Chromium and ChromeDriver, for the Metrics UI's browser test (installed as root,
# once; without root the test is skipped and says why).
browser:
	@if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then \
		if [ "$$(id -u)" = 0 ]; then \
			apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y chromium chromium-driver; \
		else \
			echo "note: chromium and chromium-driver are missing; the browser test will be skipped"; \
		fi; \
	fi

# make metrics-ui UI_ARGS='--listen 127.0.0.1:5001 --http 127.0.0.1:4000' (those are the defaults)
metrics-ui: install
	$(PY) -m metrics_ui $(UI_ARGS)

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: install
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

test: lint browser
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
