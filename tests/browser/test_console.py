"""The console in Chromium: search and recommendations side by side, rollout status, a pause that lands in the
audit trail, and actions refused without (or with a wrong) token, cross-origin or without the CSRF token.

One in-process Hatchery with stand-in models (conftest.stand_in_service): a stand-in's product ids name
its version, so each column can be checked against the arm it claims to show.
"""

from __future__ import annotations

import json

import httpx
import pytest

from artifacts.rollout_store import RolloutStore
from tests.browser._browser import shot

pytestmark = pytest.mark.slow


def test_search_shows_champion_and_challenger_side_by_side(stand_in_service, page) -> None:
    page.goto(stand_in_service["url"] + "/console/")
    page.fill("#q", "cordless drill")
    page.click("button:has-text('Search both')")
    champion, challenger = page.locator("#search-champion"), page.locator("#search-challenger")
    assert "champion vs1" in champion.locator("h2").inner_text()
    assert "challenger vs2" in challenger.locator("h2").inner_text()
    for column, version in ((champion, "s1"), (challenger, "s2")):
        rows = column.locator("tr.result")
        assert rows.count() == 10
        assert rows.first.inner_text().count(f"{version}-0") == 1  # the stand-in of that version answered
        assert "latency" in column.locator(".latency").inner_text()
    shot(page, "console_search")


def test_recommendations_side_by_side_with_repeat_or_new(stand_in_service, page) -> None:
    page.goto(stand_in_service["url"] + "/console/recommend")
    page.fill("#user_id", "12346")
    page.click("button:has-text('Recommend both')")
    assert "User 12346" in page.locator("#profile").inner_text()
    for arm, version in (("champion", "r1"), ("challenger", "r2")):
        column = page.locator(f"#rec-{arm}")
        assert f"v{version}" in column.locator("h2").inner_text()
        rows = column.locator("tr.result")
        assert rows.count() == 10
        assert f"{version}-0" in rows.first.inner_text()
        assert rows.first.locator("td.new, td.repeat").count() == 1
        assert "popular" in rows.first.inner_text()  # the candidate source the model named
    shot(page, "console_recommend")


def test_rollout_page_shows_phase_traffic_arms_and_audit(stand_in_service, page) -> None:
    page.goto(stand_in_service["url"] + "/console/rollout")
    for domain in ("search", "recommend"):
        section = page.locator(f"#rollout-{domain}")
        assert page.locator(f"#phase-{domain}").inner_text() == "canary"
        text = section.inner_text()
        assert "90.0 %" in text and "10.0 %" in text  # champion / challenger A/B shares
        arms = section.locator("table.arms tr")
        assert arms.count() == 3  # header + champion + challenger, from the last evaluation
        assert "[" in arms.nth(2).inner_text()  # the challenger's quality interval
        assert section.locator("svg.chart circle").count() == 2  # quality over time: one dot per batch
        audit = section.locator("table.audit tr")
        assert audit.count() == 4  # header + set_champion, start_shadow, canary_step
        assert "canary_step" in audit.nth(1).inner_text()  # newest first
    assert "read-only" in page.locator("#mode").inner_text()
    shot(page, "console_rollout")


def _submit(page, url: str, action: str, domain: str, operator: str, token: str | None) -> None:
    page.goto(url + "/console/rollout")
    form = page.locator(f"#form-{action}-{domain}")
    form.locator("[name=operator]").fill(operator)
    form.locator("[name=reason]").fill("checking a complaint")
    if token is not None:
        form.locator("[name=token]").fill(token)
    form.locator("[name=confirm]").check()
    page.once("dialog", lambda dialog: dialog.accept())  # the confirmation dialog of console.js
    form.locator("button[type=submit]").click()
    page.wait_for_load_state()


def test_an_action_is_refused_without_a_token(stand_in_service, page, monkeypatch) -> None:
    monkeypatch.delenv("HATCHERY_CONSOLE_TOKEN", raising=False)
    store = RolloutStore(stand_in_service["paths"], "search")
    before = store.state_path.read_bytes()
    _submit(page, stand_in_service["url"], "pause", "search", "ann", None)
    error = page.locator("#error").inner_text()
    assert "read-only" in error and "HATCHERY_CONSOLE_TOKEN" in error
    assert page.locator("#phase-search").inner_text() == "canary"
    assert store.state_path.read_bytes() == before
    shot(page, "console_refused")


def test_a_pause_with_the_token_lands_in_the_audit_trail(stand_in_service, page, monkeypatch) -> None:
    monkeypatch.setenv("HATCHERY_CONSOLE_TOKEN", "s3cret-token")
    url, store = stand_in_service["url"], RolloutStore(stand_in_service["paths"], "search")
    _submit(page, url, "pause", "search", "ann", "wrong-token")
    assert "wrong operator token" in page.locator("#error").inner_text()
    assert store.read().phase == "canary"

    _submit(page, url, "pause", "search", "ann", "s3cret-token")
    assert "pause search by ann" in page.locator("#message").inner_text()
    assert page.locator("#phase-search").inner_text() == "paused"
    newest = page.locator("#audit-search tr").nth(1).inner_text()
    assert "console:ann" in newest and "pause" in newest and "checking a complaint" in newest
    assert store.read().phase == "paused" and store.audit()[-1]["actor"] == "console:ann"
    status = httpx.post(url + "/rollout_status", json={}).json()["search"]
    assert status["state"]["phase"] == "paused"  # the service routes by it at once
    shot(page, "console_paused")

    _submit(page, url, "resume", "search", "ann", "s3cret-token")
    assert page.locator("#phase-search").inner_text() == "canary"


def test_cross_origin_and_forged_posts_are_refused(stand_in_service, monkeypatch) -> None:
    monkeypatch.setenv("HATCHERY_CONSOLE_TOKEN", "s3cret-token")
    url = stand_in_service["url"]
    store = RolloutStore(stand_in_service["paths"], "recommend")
    before = store.state_path.read_bytes()
    with httpx.Client(base_url=url) as http:
        http.get("/console/rollout")  # the CSRF cookie
        csrf = http.cookies.get("hatchery_console_csrf")
        assert csrf
        form = {
            "domain": "recommend",
            "action": "pause",
            "operator": "mallory",
            "confirm": "yes",
            "token": "s3cret-token",
        }
        evil = http.post("/console/rollout/action", data={**form, "csrf": csrf}, headers={"origin": "http://evil.test"})
        assert evil.status_code == 403 and "cross-origin" in evil.text
        none = http.post("/console/rollout/action", data={**form, "csrf": csrf})
        assert none.status_code == 403 and "no Origin" in none.text
        forged = http.post("/console/rollout/action", data={**form, "csrf": "guess"}, headers={"origin": url})
        assert forged.status_code == 403 and "CSRF" in forged.text
        unconfirmed = {**form, "csrf": csrf, "confirm": ""}
        assert http.post("/console/rollout/action", data=unconfirmed, headers={"origin": url}).status_code == 400
        illegal = http.post(
            "/console/rollout/action", data={**form, "csrf": csrf, "action": "resume"}, headers={"origin": url}
        )
        assert illegal.status_code == 409 and "only a paused rollout can be resumed" in illegal.text
        page = http.get("/console/rollout")
        assert (
            page.headers["x-frame-options"] == "DENY"
            and "frame-ancestors 'none'" in page.headers["content-security-policy"]
        )
    assert store.state_path.read_bytes() == before
    assert json.loads(before)["phase"] == "canary"


def test_recommend_page_with_a_real_recommender(monkeypatch) -> None:
    """The real RecommendModel path (history, profile, candidate generator, repeat/new) on the unit tests' shop."""
    from types import SimpleNamespace

    from starlette.testclient import TestClient

    import services.runtime as runtime
    from components import rollout as ro
    from components.recommend_model import RecommendModel, user_profiles
    from services.console import create_app
    from services.console.views import recommend_side_by_side
    from tests.unit._rec_fixtures import shop_catalog
    from tests.unit.test_rec_features import fit

    state = fit()
    model = RecommendModel(state, None, user_profiles(state, shop_catalog().set_index("product_id")["title"]))
    monkeypatch.setattr(runtime, "pseudonymous_user", lambda user_id, salt: user_id)  # the shop's ids as they are
    loaded = [runtime.Loaded(ro.ModelRef(v, f"/bundle{v}"), model) for v in ("1", "2")]
    rt = SimpleNamespace(champion=loaded[0], challenger=loaded[1], error=None)
    service = SimpleNamespace(runtimes={"recommend": rt}, salt="s")

    view = recommend_side_by_side(service, "ann", k=4)
    assert view["known"] and view["profile"] and "vector" not in view["profile"]
    bought = {h["product_id"] for h in view["history"]}
    assert bought and view["n_bought"] == len(bought)
    for column in view["columns"]:
        assert len(column["results"]) == 4 and column["ms"] is not None
        first = column["results"][0]
        assert first["product_id"] == "a" and first["repeat"] is True and first["generator"] == ("own", 1)
        assert all(r["repeat"] == (r["product_id"] in bought) for r in column["results"])
        assert all(r["generator"] is not None for r in column["results"])

    with TestClient(create_app(lambda: service), base_url="http://127.0.0.1") as http:
        page = http.get("/recommend", params={"user_id": "ann", "k": 4})
        assert page.status_code == 200
        assert page.text.count('class="repeat"') >= 2 and "Most bought" in page.text
        unknown = http.get("/recommend", params={"user_id": "never-seen", "k": 3})
        assert unknown.status_code == 200 and "Unknown user" in unknown.text


def test_reports_page_plots_the_latest_gate_of_any_workspace(tmp_path, monkeypatch) -> None:
    """A gate report written in a lifecycle run's workspace is the one shown (the newest), with its plots."""
    from types import SimpleNamespace

    import numpy as np
    from starlette.testclient import TestClient

    from artifacts.paths import Paths
    from components import gates as g
    from services.console import create_app

    monkeypatch.setenv("HATCHERY_HOME", str(tmp_path))
    rng = np.random.default_rng(0)
    champion = rng.uniform(0, 1, 200)
    challenger = np.clip(champion + 0.05, 0, 1)
    slices = np.where(np.arange(200) % 2, "head", "tail")
    checks = (g.improvement_check(challenger, champion, "ndcg_at_10", 0.0, 0.95, resamples=200),)
    checks += tuple(g.slice_checks(challenger, champion, slices, "traffic", 0.05, 10))
    report = {**g.GateReport("search", "v2", "v1", checks).to_dict(), "charter": "semantic_search"}
    old = Paths(root=tmp_path)
    old.gate_report("search").parent.mkdir(parents=True)
    old.gate_report("search").write_text(json.dumps({**report, "reason": "an older gate"}))
    workspace = Paths(root=tmp_path / "workspaces" / "o-123")
    workspace.gate_report("search").parent.mkdir(parents=True)
    workspace.gate_report("search").write_text(json.dumps(report))
    workspace.gate_report("search", "html").write_text("<h1>the gate page</h1>")
    with TestClient(create_app(lambda: SimpleNamespace(runtimes={}, salt="s")), base_url="http://127.0.0.1") as http:
        page = http.get("/reports").text
        assert "an older gate" not in page and report["reason"] in page and "PASS" in page
        assert page.count("<svg") == 3  # per version, the difference with its interval, the slices
        assert "traffic=head champion" in page
        assert http.get("/files/o-123/gates/search.html").text == "<h1>the gate page</h1>"
        assert http.get("/files/_/gates/search.html").status_code == 404  # the root has no HTML page
        assert http.get("/files/o-123/gates/../../../../etc/passwd").status_code == 404
        assert http.get("/files/nowhere/gates/search.html").status_code == 404
