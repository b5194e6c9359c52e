# The two commands of the README: `make run` (the whole lifecycle on embedded defaults) and `make test`.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cksum requirements.lock | cut -d' ' -f1)
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: venv run stop data test test-fast bench lint

venv: $(STAMP)

# torch first with pip: pip takes the CPU wheel where the machine has one on disk (uv would fetch
# the multi-GB CUDA build); everything else is pinned in requirements.lock and installed by uv.
$(STAMP): requirements.lock
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check uv==$$(grep '^uv==' requirements.lock | cut -d= -f3)
	$(PY) -m pip install -q --disable-pip-version-check torch==$$(grep '^torch==' requirements.lock | cut -d= -f3)
	$(VENV)/bin/uv pip install -q --python $(PY) -r requirements.lock
	rm -f $(VENV)/.installed-* && touch $@

# Starts the embedded Airflow (standalone, SQLite, LocalExecutor) and the MLflow UI, triggers the
# incubation DAG through the REST API once per shipped charter, follows both runs to the end and
# prints the URLs. `make stop` stops what it started.
run: venv
	$(PY) infra/airflow/run_lifecycle.py

stop: venv
	$(PY) infra/airflow/run_lifecycle.py --stop

data: venv
	dvc repro split

test: venv
	$(PY) -m pytest -q

test-fast: venv
	$(PY) -m pytest -q -m "not slow"

# Benchmarks print numbers (and ratios against baselines measured in the same run); the search,
# recommendation and serving ones need the trained bundles from `make run` or `dvc repro`.
bench: venv
	$(PY) -m bench.data
	$(PY) -m bench.search
	$(PY) -m bench.recommend
	$(PY) -m bench.serving

lint: venv
	$(VENV)/bin/ruff check components pipelines dags services tests
