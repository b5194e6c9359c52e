"""The Hatchery console: the pages a person who decides reads, served by the service at /console.

    bentoml serve services.service:Hatchery        # http://127.0.0.1:3000/console/

Pages (server-rendered HTML, Jinja2 templates in services/console/templates/, one small script):
    /console/            search: champion and challenger side by side (score, top LightGBM contributions,
                         the retrieval source that found each result, the latency of each)
    /console/recommend   a user's purchase history summary, both lists, candidate source, repeat vs new
    /console/rollout     phase and traffic shares per domain, each arm's numbers, the audit trail, actions
    /console/reports     the latest data-contract and gate reports, with plots
A preview on these pages calls the loaded models directly: it never enters the rollout's request log,
so looking at a query does not count as traffic of either arm.

Safe by default (services/console/security.py): pause / resume / rollback / promote need the token set
in HATCHERY_CONSOLE_TOKEN on the server (unset: read-only, every action refused with the reason), a
CSRF token bound to a cookie, a same-origin Origin header, a confirmation and an operator name; the
console answers only on a loopback address unless HATCHERY_CONSOLE_EXPOSE=1.

Importing this package imports nothing heavy: create_app (services/console/app.py) builds the
Starlette app, and every model or store is touched inside a request.
"""

from __future__ import annotations


def create_app(get_service=None):
    """The console's ASGI app. get_service() -> the object holding `runtimes` and `salt` (default: BentoML's
    current service, i.e. the Hatchery instance serving this process)."""
    from services.console.app import create_app as _create

    return _create(get_service)
