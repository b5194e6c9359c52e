# The image every Airflow component runs on Kubernetes (infra/helm/airflow-values.yaml `images.airflow`):
# the official Airflow image at the version requirements.lock pins, plus the project's locked dependencies,
# installed the way `make venv` installs them (hash-checked, no resolver). The code is not baked in: the
# DAG processor and the workers get the repository through git-sync, so a commit ships without a rebuild;
# only a change to the locks needs a new image.
#
#   docker build -f infra/k8s/airflow.Dockerfile -t registry.example.com/hatchery/airflow:3.3.2-1 .
FROM apache/airflow:3.3.2-python3.11

COPY requirements-pip.lock requirements-torch.lock requirements.lock /opt/hatchery/locks/
RUN python -m pip install -q --require-hashes --no-deps -r /opt/hatchery/locks/requirements-pip.lock \
 && python -m pip install -q --require-hashes --no-deps -r /opt/hatchery/locks/requirements-torch.lock \
 && uv pip install -q --python "$(command -v python)" --require-hashes --no-deps -r /opt/hatchery/locks/requirements.lock \
 && uv pip check --python "$(command -v python)"
