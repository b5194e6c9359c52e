"""The service's Swagger page in Chromium: Hatchery's own title, version and description (no framework
badges or trackers), and a /search call made from the page itself ("Try it out", "Execute")."""

from __future__ import annotations

import json

import httpx
import pytest

from services.console.docs import TITLE, project_version
from tests.browser._browser import shot

pytestmark = pytest.mark.slow


def test_the_openapi_document_describes_hatchery(stand_in_service) -> None:
    spec = httpx.get(stand_in_service["url"] + "/docs.json").json()
    assert spec["info"]["title"] == TITLE and spec["info"]["version"] == project_version() != "unknown"
    assert "/search" in spec["info"]["description"] and "BentoML" not in json.dumps(spec["info"])
    assert "contact" not in spec["info"] or not spec["info"]["contact"]
    index = httpx.get(stand_in_service["url"] + "/").text
    for outside in ("googletagmanager", "shields.io", "github.com/bentoml"):
        assert outside not in index


def test_swagger_page_answers_a_search_call(stand_in_service, page) -> None:
    outside = []
    page.on("request", lambda r: outside.append(r.url) if not r.url.startswith(stand_in_service["url"]) else None)
    page.goto(stand_in_service["url"] + "/")
    assert page.title() == "Hatchery API"
    info = page.locator(".information-container")
    info.wait_for()
    assert "Hatchery" in info.inner_text() and project_version() in info.inner_text()
    operation = page.locator(".opblock-post", has=page.locator(".opblock-summary-path", has_text="/search")).first
    operation.locator(".opblock-summary").click()
    operation.locator("button.try-out__btn").click()
    operation.locator("textarea.body-param__text").fill(json.dumps({"query": "cordless drill", "k": 3}))
    operation.locator("button.execute").click()
    live = operation.locator(".live-responses-table tr.response td.response-col_status").first
    live.wait_for()
    assert live.inner_text().strip().startswith("200")
    body = operation.locator(
        ".live-responses-table tr.response td.response-col_description pre.microlight"
    ).first.inner_text()
    answer = json.loads(body)
    assert answer["model_version"] in ("s1", "s2") and len(answer["results"]) == 3
    assert not outside, outside  # no badge, font or tracker fetched from elsewhere
    shot(page, "swagger_search")
