# The two commands a newcomer needs are `make run` and `make test`; both
# create .venv on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install test lint format run bench bench-latency bench-autoscale bench-recovery bench-driver metrics-ui metrics-ui-install browser

# The Metrics UI's chart library (Chart.js, pinned in metrics_ui/vendor.py), fetched with npm:
# only by the targets that serve the page or test it (make metrics-ui, make test), so that
# make install and make run need no npm.
CHART := metrics_ui/static/vendor/chart.umd.js

install: $(STAMP)

metrics-ui-install: $(CHART)

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
metrics-ui: install $(CHART)
	$(PY) -m metrics_ui $(UI_ARGS)

# ruff, then mypy over the layers pyproject.toml names (the protocols between them included).
lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

format: install
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

test: lint browser flink-install $(CHART)
	$(PY) -m pytest

# make run RUN_ARGS='--base-port 17000' moves every port of the scenario.
run: install
	$(PY) scripts/demo.py $(RUN_ARGS)

# make bench N=10000000 is the soak run (watch the RSS samples stay flat). It measures
# throughput flat out, then latency at fixed rates (make bench-latency), then the pause of a
# grow and a shrink (make bench-autoscale).
N ?= 1000000
bench: install flink-install
	$(PY) scripts/bench.py --n $(N)
	$(PY) scripts/bench_latency.py $(LATENCY_ARGS)
	$(PY) scripts/bench_autoscale.py

# make bench-latency LATENCY_ARGS='--rates 50000,100000 --seconds 20 --modes plain'
bench-latency: install
	$(PY) scripts/bench_latency.py $(LATENCY_ARGS)

bench-autoscale: install
	$(PY) scripts/bench_autoscale.py

# A worker's memory while it recovers from a 1 GiB event log, against a normal run.
bench-recovery: install
	$(PY) scripts/bench_recovery.py

bench-driver: install
	$(PY) scripts/bench_driver.py

# ---- The Flink back end (machida-flink, docs/flink.md) --------------------------------------
# apache-flink (pinned as the "flink" extra in pyproject.toml) is big (~850 MB with its
# dependencies), so only these targets and make test / make bench install it; make install
# and make run stay light. The Java classes are compiled from java/ against its jars.
FLINK_STAMP := $(VENV)/.flink-installed
FLINK_JAR := build/flink/machida-flink.jar
JAVA_SOURCES := $(wildcard java/machida/flink/*.java)
TASKMANAGERS ?= 2
FLINK_SLOTS ?= 2
FLINK_REST_PORT ?= 8081
FLINK_RPC_PORT ?= 6123

.PHONY: flink-install jdk flink-run flink-cluster flink-cluster-add flink-cluster-stop bench-flink-rescale

flink-install: $(FLINK_STAMP) $(FLINK_JAR)

# Debian's OpenJDK 17 (javac and a JVM), installed as root when missing.
jdk:
	@if ! command -v javac >/dev/null || ! command -v java >/dev/null; then \
		if [ "$$(id -u)" = 0 ]; then \
			apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y openjdk-17-jdk-headless; \
		else \
			echo "error: machida-flink needs a JDK: apt-get install openjdk-17-jdk-headless" >&2; exit 1; \
		fi; \
	fi

$(FLINK_STAMP): $(STAMP) pyproject.toml | jdk
	$(PY) -m pip install --quiet --disable-pip-version-check --no-warn-conflicts -e ".[flink]"
	touch $(FLINK_STAMP)

$(FLINK_JAR): $(FLINK_STAMP) $(JAVA_SOURCES)
	$(PY) -m machida_flink.jar

# make flink-run RUN_ARGS='--parallelism 2 --jobmanager 127.0.0.1:8081'
flink-run: install flink-install
	$(PY) scripts/flink_demo.py $(RUN_ARGS)

# A standalone session cluster from the installed distribution: a JobManager (REST on
# 127.0.0.1:$(FLINK_REST_PORT), RPC on $(FLINK_RPC_PORT)) and $(TASKMANAGERS) TaskManagers, each its own JVM.
flink-cluster: install flink-install
	$(PY) -m machida_flink.cluster start --taskmanagers $(TASKMANAGERS) --slots $(FLINK_SLOTS) --rest-port $(FLINK_REST_PORT) --rpc-port $(FLINK_RPC_PORT)

# What a rescale of a running machida-flink job costs: the output's pause over 10 rescales
# (p50 and max), into bench/flink_rescale.json. make bench-flink-rescale RESCALE_ARGS='--rate 5000'
bench-flink-rescale: install flink-install
	$(PY) scripts/bench_flink_rescale.py $(RESCALE_ARGS)

# $(ADD) more TaskManagers (default 1) in the running cluster, for a job to be rescaled onto
# (external_sender -t rescale -m N needs N free task slots once the job's own are back).
ADD ?= 1
flink-cluster-add: flink-install
	$(PY) -m machida_flink.cluster add --taskmanagers $(ADD)

flink-cluster-stop: flink-install
	$(PY) -m machida_flink.cluster stop
