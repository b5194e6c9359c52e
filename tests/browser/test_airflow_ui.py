"""The flow a user follows in the Airflow UI: log in, open the `incubation` DAG, trigger it from the trigger form
with a charter chosen in the form, see the run's task groups green once it has ended, open the run's report.

The embedded Airflow of `make run` (its four components, tmp AIRFLOW_HOME, free port) beside a real
`bentoml serve` for the rollout task; the run's overrides (the tiny slice, few training steps) are
typed into the form's JSON editor as a user would. The report is opened where the run's artefacts are
served: the console's lifecycle-run list (the Airflow UI itself has no link to a file on disk).
"""

from __future__ import annotations

import json
import re
import time
from urllib.parse import unquote

import pytest

from artifacts.paths import run_key
from tests.browser._browser import shot
from tests.browser._lifecycle import CHARTER, tiny_overrides

pytestmark = pytest.mark.slow

GROUPS = ("requirements", "training", "validation", "packaging", "rollout", "report")


def log_in(page, world: dict) -> None:
    page.goto(world["airflow_url"] + "/")
    page.get_by_label("Username").fill("admin")
    page.get_by_label("Password").fill(world["password"])
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(world["airflow_url"] + "/", timeout=60_000)


def _badge_colour(locator) -> str:
    return locator.evaluate("e => getComputedStyle(e).backgroundColor")


def trigger_from_the_form(page, world: dict) -> str:
    """Open the DAG, fill the trigger form (charter chosen, overrides typed), trigger; the new run's id."""
    page.goto(world["airflow_url"] + "/dags/incubation")
    page.get_by_test_id("task-requirements").wait_for()  # the DAG's grid has rendered its task groups
    page.get_by_test_id("trigger-dag-button").click()
    form = page.get_by_role("dialog")
    form.get_by_role("combobox").click()  # the charter: the DAG's enum param, a select in the form
    offered = {o.strip() for o in page.get_by_role("option").all_inner_texts()}
    assert {"semantic_search", "personalised_recommendations"} <= offered, offered  # the shipped charters
    page.get_by_role("option", name=CHARTER).click()
    assert form.get_by_text(CHARTER, exact=True).count() == 1  # the select shows the choice
    form.locator(".monaco-editor").first.click()  # overrides: the form's JSON editor
    page.keyboard.press("Control+A")
    page.keyboard.press("Delete")
    page.keyboard.insert_text(json.dumps(tiny_overrides(world["data"])))
    shot(page, "airflow_trigger_form")
    form.get_by_role("button", name="Trigger").click()
    page.wait_for_url("**/dags/incubation/runs/**")
    return unquote(page.url.split("/runs/", 1)[1].split("/")[0].split("?")[0])


def watch_until_green_and_open_the_report(page, world: dict, run_id: str, timeout_s: float = 1500) -> None:
    """Open the run page while the run goes; come back when it has ended: every task group green on it; then the
    run's report.

    When the run has ended is asked of the API the page itself reads, not of the first state badge on the
    page: the run page also lists its task instances, each with a state badge, and in CI a reload that had
    rendered that list before the run's header made the first badge a finished task's "success" while the
    run was still in its gate. Meanwhile the browser shows a blank page, as a user who triggered the run and
    went on with other work: the run page refreshes itself while a run goes, and that kept the browser's
    renderer on a quarter of a core, for the whole run, of the two cores the run and CI's other lane need.
    """
    url = f"{world['airflow_url']}/dags/incubation/runs/{run_id}"
    run_path = f"/api/v2/dags/incubation/dagRuns/{run_id}"
    page.goto(url)
    page.get_by_test_id("state-badge").first.wait_for()  # the running run's page renders
    page.goto("about:blank")
    deadline = time.time() + timeout_s
    while (state := world["api"].get(run_path)["state"]) not in ("success", "failed"):
        assert time.time() < deadline, f"the run is still {state}"
        time.sleep(5)
    assert state == "success", world["api"].get(f"{run_path}/taskInstances")
    page.goto(url)
    success = re.compile(r"^\s*success\s*$", re.IGNORECASE)
    run_badge = page.get_by_test_id("state-badge").filter(has_text=success).first
    run_badge.wait_for()
    green = _badge_colour(run_badge)  # the colour of "success" in this UI's theme
    badges = page.get_by_test_id("state-badge")
    seen = [(badges.nth(i).inner_text().strip(), _badge_colour(badges.nth(i))) for i in range(badges.count())]
    for group in GROUPS:
        badge = page.get_by_test_id(f"grid-{run_id}-{group}").get_by_test_id("task-state-badge")
        assert _badge_colour(badge) == green, (group, "state badges on the page:", seen)
    shot(page, "airflow_run_green")

    # The run's report, from the console's list of lifecycle runs (served by the service, loopback only).
    page.goto(world["service_url"] + "/console/reports")
    assert "PASS" in page.locator("#gates").inner_text()  # this run's gate, with its plots
    assert page.locator("#gates svg.chart").count() >= 2
    shot(page, "console_reports")
    page.locator(f'#runs a[href$="/files/_/incubation/{run_key(run_id, CHARTER)}/index.html"]').click()
    body = page.locator("body").inner_text()
    assert CHARTER in body and run_id in body
    shot(page, "airflow_run_report")


def test_trigger_the_incubation_from_the_ui_and_open_its_report(lifecycle_world, page) -> None:
    world = lifecycle_world
    log_in(page, world)
    run_id = trigger_from_the_form(page, world)
    world["run_id"] = run_id  # the MLflow test waits for this run instead of triggering its own
    conf = world["api"].get(f"/api/v2/dags/incubation/dagRuns/{run_id}")["conf"]
    assert conf["charter"] == CHARTER and conf["overrides"]["data.search.path"] == str(world["data"])
    watch_until_green_and_open_the_report(page, world, run_id)
