"""The service's own OpenAPI text and Swagger page, instead of BentoML's defaults.

Under `bentoml serve` (no built Bento) BentoML documents a service with a generated README: the
framework's name, "This is a Machine Learning Service created with BentoML", five badges fetched from
img.shields.io and friends, version "None", contact "BentoML Team", and a Swagger page titled
"BentoML Prediction Service" that loads Google Tag Manager. Here:

- DocumentedService (passed as `service_class` to @bentoml.service, its documented parameter) answers
  `doc` and `openapi_spec` with Hatchery's title, version (pyproject.toml) and description;
- swagger_app() is mounted at "/" (BentoML's PassiveMount only takes the paths its routes match, so
  only "/" itself): the same Swagger UI from BentoML's bundled static files, titled Hatchery, with no
  external script, badge or tracker.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

import attr
import bentoml

REPO_ROOT = Path(__file__).resolve().parents[2]
TITLE = "Hatchery"
DESCRIPTION = """\
Search and recommendation models incubated by Hatchery, served from the model registry's champions
(and a challenger during a staged rollout).

- **POST /search**: ranked products for a free-text query (`explain`: each result's top feature contributions)
- **POST /recommend**: top-k products for a shop user id (an unknown user gets the popular fallback)
- **POST /similar**: products similar to a product
- **POST /rollout_status**: per domain, the loaded champion/challenger and the rollout phase
- **GET /readyz**: 200 once a champion is loaded; **GET /metrics**: Prometheus, per model version and arm
- **/console/**: the decision console (search and recommendations side by side, rollout, reports)

Every answer names the `model_version` and rollout `arm` that produced it. Bad input is a 4xx with the
reason, never a 500.
"""
APP_TAG_TEXT = "Hatchery's endpoints: search, recommendations, similar items, rollout status."


def project_version() -> str:
    """pyproject.toml's [project] version ('unknown' when the file is not beside the code, e.g. in a Bento)."""
    try:
        return tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["version"]
    except (OSError, KeyError, ValueError):
        return "unknown"


class DocumentedService(bentoml.Service):
    """A BentoML service whose OpenAPI document and README describe Hatchery, not the framework."""

    @property
    def doc(self) -> str:
        return f"# {TITLE} {project_version()}\n\n{DESCRIPTION}"

    @property
    def openapi_spec(self):
        from bentoml._internal.service.openapi.specification import Info, Tag

        spec = super().openapi_spec
        tags = [Tag(name=t.name, description=APP_TAG_TEXT) if t.name == "Service APIs" else t for t in spec.tags]
        return attr.evolve(spec, info=Info(title=TITLE, version=project_version(), description=DESCRIPTION), tags=tags)


SWAGGER_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>Hatchery API</title>
<link rel="stylesheet" href="./static_content/swagger-ui.css">
<link rel="icon" href="data:,">
</head>
<body>
<div id="swagger-ui"></div>
<script src="./static_content/swagger-ui-bundle.js"></script>
<script src="./static_content/swagger-ui-standalone-preset.js"></script>
<script>
window.ui = SwaggerUIBundle({
  url: "./docs.json", dom_id: "#swagger-ui", deepLinking: true,
  presets: [SwaggerUIBundle.presets.apis, SwaggerUIStandalonePreset], layout: "BaseLayout"
});
</script>
</body>
</html>
"""


def swagger_app():
    """A Starlette app answering only GET / with Hatchery's Swagger page (mount it at "/")."""
    from starlette.applications import Starlette
    from starlette.responses import HTMLResponse
    from starlette.routing import Route

    async def index(request):
        return HTMLResponse(SWAGGER_PAGE)

    return Starlette(routes=[Route("/", index)])
