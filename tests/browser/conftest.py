"""Browser fixtures: Debian's Chromium driven by Playwright, and one in-process Hatchery with stand-in models.

Chromium is the `chromium` Debian package (Playwright's own browser download does not work on these
machines): `.ci/run` and `make test` install it when it is missing. Every test saves a screenshot of
what it checked (tests/browser/_browser.py: test-artifacts/screenshots/).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests.browser._browser import CHROMIUM_ARGS, serve_in_thread


@pytest.fixture(scope="session")
def browser():
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.fail("no `chromium` on PATH: `apt-get install -y chromium` (make test and .ci/run install it)")
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    pg = context.new_page()
    pg.set_default_timeout(30_000)
    yield pg
    context.close()


@pytest.fixture(scope="module")
def stand_in_service(tmp_path_factory):
    """The real Hatchery app (console, Swagger page, endpoints) on a free loopback port, stand-in models.

    Module-scoped: it sets HATCHERY_HOME, MLflow's URI and the salt, and swaps runtime.load_bundle for the
    stand-in loader; a session-scoped one kept those for every later test of the session (the service,
    BYOD and config tests then ran against the stand-ins' home).

    Both domains in canary step 0 (champion <d>1, challenger <d>2, 10 % A/B), with one evaluation
    each, so the rollout page has every part to show. Yields {"url", "paths", "root"}.
    """
    import services.runtime as runtime
    from artifacts.paths import Paths
    from artifacts.rollout_store import RolloutStore
    from components import rollout as ro
    from services import launch
    from tests.services._stand_ins import forget_bentoml_metrics, make_bundle, stand_in_loader

    root = tmp_path_factory.mktemp("console")
    env = {
        "HATCHERY_HOME": str(root),
        "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}",
        "HATCHERY_PSEUDONYM_SALT": "test-salt",
    }
    saved = {k: os.environ.get(k) for k in [*env, "HATCHERY_CONSOLE_TOKEN"]}
    os.environ.update(env)
    os.environ.pop("HATCHERY_CONSOLE_TOKEN", None)
    paths = Paths(root=root)
    for domain in ("search", "recommend"):
        store = RolloutStore(paths, domain)
        a, b = make_bundle(root, f"{domain[0]}1"), make_bundle(root, f"{domain[0]}2")
        s = store.save(*ro.set_champion(ro.RolloutState(domain=domain), a, 1.0e9, "pipelines.rollout", "first model"))
        s = store.save(*ro.start_shadow(s, b, 1.0, 1.0e9 + 60, "pipelines.rollout", "the gate passed"))
        s = store.save(*ro.enter_canary_step(s, 0, 0.1, 1.0e9 + 120, "pipelines.rollout", "shadow healthy"))
        for batch, challenger_rate in enumerate([0.085, 0.104], start=1):
            arm = {"requests": 900 * batch, "errors": 0, "error_rate": 0.0, "p50_ms": 4.0, "p99_ms": 9.0}
            seen = {"champion": 800 * batch, "challenger": 90 * batch}
            hits = {
                "champion": round(0.1 * seen["champion"]),
                "challenger": round(challenger_rate * seen["challenger"]),
            }
            diff = hits["challenger"] / seen["challenger"] - hits["champion"] / seen["champion"]
            store.append_evaluation(
                {
                    "ts": 1.0e9 + 120 + 60 * batch,
                    "rollout_id": s.rollout_id,
                    "phase": "canary",
                    "step": 0,
                    "share": 0.1,
                    "batch": batch,
                    "decision": "hold",
                    "reasons": ["online quality: not enough impressions yet"],
                    **{a: {**arm, "impressions": seen[a], "successes": hits[a], "quality": hits[a] / seen[a]}
                       for a in ("champion", "challenger")},
                    "quality": {"test": "non_inferiority", "diff": diff, "lower": diff - 0.06, "upper": diff + 0.06,
                                "verdict": "continue"},
                }
            )  # fmt: skip
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(runtime, "load_bundle", stand_in_loader)
        from services.service import Hatchery

        forget_bentoml_metrics()
        port = launch.free_port()
        server, thread = serve_in_thread(Hatchery.to_asgi(), port)
        try:
            yield {"url": f"http://127.0.0.1:{port}", "paths": paths, "root": Path(root)}
        finally:
            server.should_exit = True
            thread.join(timeout=30)
    for k, v in saved.items():
        os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)


@pytest.fixture(scope="package")
def lifecycle_world(homedepot_raw, online_retail_raw, tmp_path_factory):
    """`make run`'s servers in tmp (tests/browser/_lifecycle.py): Airflow, MLflow UI, the service; one for the
    browser tests (package scope: stopped once they are done, not left polling through the rest of the session).

    test_airflow_ui.py triggers the one incubation run through the UI and records its id in
    world["run_id"]; incubated_world reuses it (or triggers it through the REST API when run alone).
    """
    from tests.browser._lifecycle import start_world, stop_world

    world = start_world(tmp_path_factory.mktemp("lifecycle"), homedepot_raw, online_retail_raw)
    try:
        yield world
    finally:
        stop_world(world)


@pytest.fixture(scope="package")
def incubated_world(lifecycle_world):
    """lifecycle_world after one successful semantic_search incubation run (the UI test's, else one via the API)."""
    from tests.browser._lifecycle import CHARTER, tiny_overrides, wait_for_run

    world = lifecycle_world
    if "run_id" not in world:
        run = world["api"].post(
            "/api/v2/dags/incubation/dagRuns",
            {"logical_date": None, "conf": {"charter": CHARTER, "overrides": tiny_overrides(world["data"])}},
        )
        world["run_id"] = run["dag_run_id"]
    state = wait_for_run(world, world["run_id"])
    assert state == "success", f"the incubation run {world['run_id']} {state}: see {world['root']}"
    return world
