"""The MLflow UI of `make run` in Chromium: the registered model with its `champion` and `challenger` aliases,
and the gate's run with its report artifact.

After the session's one incubation run (conftest.incubated_world), version 1 of hatchery-search is the
champion the gate passed and the rollout promoted; the gate run is the one the version's
`gate_run_id` tag names. A second gated version would take a second incubation (minutes): version 2
is made here from version 1's source and given the `challenger` alias through the registry client, as
the gate's Registry.set_challenger does, so the UI has both aliases to show.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from artifacts.registry import CHALLENGER, CHAMPION, GATE_RUN_TAG
from tests.browser._browser import shot

pytestmark = pytest.mark.slow

NAME = "hatchery-search"
LOAD_MS = 90_000  # the MLflow UI's first page load compiles its bundle in the browser: slow on 2 busy cores


def registry_with_a_challenger(world: dict) -> dict:
    """The champion the run made, version 2 aliased `challenger`, and the champion's gate run id."""
    from mlflow import MlflowClient

    uri = world["env"]["MLFLOW_TRACKING_URI"]
    client = MlflowClient(uri, registry_uri=uri)
    champion = client.get_model_version_by_alias(NAME, CHAMPION)
    if CHALLENGER not in client.get_registered_model(NAME).aliases:
        # The champion's bundle as the service downloaded it (its logged-model source lives in the run's store).
        bundle = Path(world["home"]) / "serving_cache" / NAME / str(champion.version)
        second = client.create_model_version(NAME, source=str(bundle), run_id=champion.run_id)
        client.set_registered_model_alias(NAME, CHALLENGER, second.version)
    challenger = client.get_model_version_by_alias(NAME, CHALLENGER).version
    return {
        "client": client,
        "champion": champion,
        "challenger": challenger,
        "gate_run_id": champion.tags[GATE_RUN_TAG],
    }


@pytest.fixture(scope="module")
def registry(incubated_world):
    return registry_with_a_challenger(incubated_world)


def test_registered_model_shows_champion_and_challenger_aliases(incubated_world, registry, page) -> None:
    page.set_default_timeout(LOAD_MS)
    page.goto(f"{incubated_world['mlflow_url']}/#/models/{NAME}")
    page.get_by_text(CHAMPION, exact=False).first.wait_for()
    assert NAME in page.locator("body").inner_text()
    aliases = {CHAMPION: registry["champion"].version, CHALLENGER: registry["challenger"]}
    for alias, version in aliases.items():  # each alias in the row of the version it names
        row = page.get_by_role("row").filter(has_text=f"Version {version}").first
        assert f"@ {alias}" in " ".join(row.inner_text().split()), row.inner_text()
    shot(page, "mlflow_registry_aliases")


def test_gate_run_holds_its_report_artifact(incubated_world, registry, page) -> None:
    run = registry["client"].get_run(registry["gate_run_id"])
    assert run.info.run_name == "gate"
    report = "search.json"  # pipelines/gate.py logs the domain's gate report under gate/
    page.set_default_timeout(LOAD_MS)
    page.goto(
        f"{incubated_world['mlflow_url']}/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}/artifacts"
    )
    page.locator('[data-testid="artifact-tree-node"][artifact-name="gate"]').click()  # open the folder, as a user
    page.locator('[data-testid="artifact-tree-node"]', has_text=report).click()
    page.get_by_text('"passed": true', exact=False).first.wait_for()  # the preview of the report
    assert page.locator('[data-testid="artifact-tree-node"]', has_text="search.html").count() == 1  # HTML beside it
    preview = page.locator("body").inner_text()
    assert '"checks"' in preview and '"charter": "semantic_search"' in preview
    shot(page, "mlflow_gate_run")
