"""`make run` says "ready" only once the service answers with the champions (infra/airflow/run_lifecycle.py)."""

from __future__ import annotations

import pytest

from services import launch
from tests.browser._lifecycle import run_lifecycle_module

pytestmark = pytest.mark.slow


def test_ready_only_when_every_domain_answers_with_its_champion(stand_in_service) -> None:
    rl = run_lifecycle_module()
    url = stand_in_service["url"]
    assert rl.champions_serving(url, ["search", "recommend"]) == {"search": "s1", "recommend": "r1"}
    assert rl.charter_domain("semantic_search") == "search"
    assert rl.charter_domain("personalised_recommendations") == "recommend"
    nobody = f"http://127.0.0.1:{launch.free_port()}"
    assert rl.champions_serving(nobody, ["search"]) is None
    assert rl.wait_for_champions(nobody, ["search"], timeout_s=1.0, poll_s=0.2) is None


def test_not_ready_while_a_champion_loads_or_search_answers_503(monkeypatch) -> None:
    """/rollout_status answering is not enough: the champion the state names must be loaded and /search a 200."""
    rl = run_lifecycle_module()
    named = {"search": {"ready": True, "champion": "1", "state": {"champion": {"version": "2"}}}}
    answers = {"/rollout_status": (200, named), "/search": (200, {"model_version": "2"})}
    monkeypatch.setattr(rl, "_post", lambda url, body, timeout_s=10.0: answers[url.removeprefix("http://x")])
    assert rl.champions_serving("http://x", ["search"]) is None  # v1 still serving, v2 loading
    named["search"]["champion"] = "2"
    answers["/search"] = (503, {"error": "search model v2 is loading"})
    assert rl.champions_serving("http://x", ["search"]) is None
    answers["/search"] = (200, {"model_version": "2"})
    assert rl.champions_serving("http://x", ["search"]) == {"search": "2"}
