# The two commands of the README: `make run` (the whole lifecycle on embedded defaults) and `make test`.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cksum requirements.lock | cut -d' ' -f1)
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: venv run data test test-fast bench lint clean-outputs

venv: $(STAMP)

# torch first with pip: pip takes the CPU wheel where the machine has one on disk (uv would fetch
# the multi-GB CUDA build); everything else is pinned in requirements.lock and installed by uv.
$(STAMP): requirements.lock
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check uv==$$(grep '^uv==' requirements.lock | cut -d= -f3)
	$(PY) -m pip install -q --disable-pip-version-check torch==$$(grep '^torch==' requirements.lock | cut -d= -f3)
	$(VENV)/bin/uv pip install -q --python $(PY) -r requirements.lock
	rm -f $(VENV)/.installed-* && touch $@

run: venv
	dvc repro
	dvc push -q
	@echo "data checks report: file://$(CURDIR)/reports/data_checks/tables/index.html"
	@echo "MLflow: $(VENV)/bin/mlflow ui --backend-store-uri sqlite:///$(CURDIR)/mlflow.db  -> http://127.0.0.1:5000"

data: venv
	dvc repro split

test: venv
	$(PY) -m pytest -q

test-fast: venv
	$(PY) -m pytest -q -m "not slow"

bench: venv
	$(PY) -m pipelines.bench_data

lint: venv
	$(VENV)/bin/ruff check components pipelines dags services tests
