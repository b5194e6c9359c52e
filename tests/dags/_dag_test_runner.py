"""Run the incubation DAG once, in this interpreter, with `dag.test` — for the end-to-end test.

    python tests/dags/_dag_test_runner.py '<run_conf json>'

Run in a fresh interpreter whose environment already points AIRFLOW_HOME, HATCHERY_HOME and
MLFLOW_TRACKING_URI at a temporary folder (Airflow reads its config at import). Creates the
metadata DB and the DVC pool, runs the DAG, prints one JSON line: the run id and every task
instance's state (mapped ones labelled by stage).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def main(conf: dict) -> None:
    from airflow.dag_processing.dagbag import DagBag
    from airflow.models.pool import Pool
    from airflow.utils import db

    db.initdb()
    Pool.create_or_update_pool("hatchery_dvc", slots=1, description="DVC repository lock", include_deferred=False)
    bag = DagBag(dag_folder=str(REPO / "dags"))
    assert not bag.import_errors, bag.import_errors
    run = bag.dags["incubation"].test(run_conf=conf)
    states = {}
    for ti in run.get_task_instances():
        label = ti.task_id + (f"[{ti.rendered_map_index or ti.map_index}]" if ti.map_index >= 0 else "")
        states[label] = str(ti.state)
    print("DAG_TEST_RESULT " + json.dumps({"run_id": run.run_id, "state": str(run.state), "tasks": states}))


if __name__ == "__main__":
    import os

    # dag.test serialises the DAG from the configured DAG folder: point it at the repository's.
    os.environ.setdefault("AIRFLOW__CORE__DAGS_FOLDER", str(REPO / "dags"))
    os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
    main(json.loads(sys.argv[1]))
