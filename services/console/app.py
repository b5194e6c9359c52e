"""The console's Starlette app: routes, rendering, and the safety checks of services/console/security.py.

Mounted by services/service.py at /console; every link is relative to the mount (`base`).

    GET  /                      search side by side (?q=&k=)
    GET  /recommend             recommendations side by side (?user_id=&k=)
    GET  /rollout               rollout status, audit trail, actions
    POST /rollout/action        pause | resume | rollback | promote (token, CSRF, same origin, confirmation)
    GET  /reports               data-contract and gate reports, plots, lifecycle runs
    GET  /files/...             the report files themselves (gate HTML, lifecycle report, Data Docs), read-only
    GET  /static/console.js     the one script (confirmation dialog)
"""

from __future__ import annotations

import logging
import mimetypes
import re
from pathlib import Path
from urllib.parse import quote

import services.console.security as security

log = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
MAX_K = 50
ROOT = "_"  # the outputs root in /files/<root>/... (a workspace name otherwise)
MAX_TEXT = 256
OPERATOR = re.compile(r"^[\w .@-]{1,64}$")


def _current_service():
    import bentoml

    return bentoml.get_current_service()


def create_app(get_service=None):
    """The console app; get_service() -> the Hatchery instance (default: BentoML's current service)."""
    import jinja2
    from markupsafe import Markup
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import FileResponse, HTMLResponse, PlainTextResponse, RedirectResponse, Response
    from starlette.routing import Route

    import services.console.actions as actions
    import services.console.views as views
    from artifacts.paths import DOMAINS, Paths
    from components import rollout as ro

    get_service = get_service or _current_service
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(HERE / "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["ms"] = lambda v: "—" if v is None else f"{v:.1f} ms"
    env.filters["num"] = lambda v, d=4: "—" if v is None else (f"{v:.{d}f}" if isinstance(v, float) else str(v))
    env.filters["pct"] = lambda v: "—" if v is None else f"{100 * v:.1f} %"
    env.filters["when"] = _when
    env.filters["svg"] = Markup  # interval_chart escapes every value it writes
    env.filters["root"] = lambda name: name or ROOT  # a report root in /files/<root>/...
    mlflow_links: dict[str, views.MlflowLinks] = {}

    def paths() -> Paths:
        return Paths()

    def links_for(p: Paths) -> views.MlflowLinks:
        return mlflow_links.setdefault(str(p.root), views.MlflowLinks(p))

    def page(request: Request, template: str, status: int = 200, **context) -> Response:
        token = request.cookies.get(security.CSRF_COOKIE) or security.new_csrf_token()
        html = env.get_template(template).render(
            base=request.scope.get("root_path", "").rstrip("/"),
            csrf=token,
            read_only=not security.configured_token(),
            active=template.split(".")[0],
            mlflow=views.mlflow_url(),
            **context,
        )
        response = HTMLResponse(html, status_code=status, headers=security.SECURITY_HEADERS)
        if request.cookies.get(security.CSRF_COOKIE) != token:
            response.set_cookie(
                security.CSRF_COOKIE,
                token,
                httponly=True,
                samesite="strict",
                path=request.scope.get("root_path", "") or "/",
            )
        return response

    def text(value: str | None, limit: int = MAX_TEXT) -> str:
        return (value or "").strip()[:limit]

    def k_of(request: Request, default: int = 10) -> int:
        try:
            return max(1, min(MAX_K, int(request.query_params.get("k", default))))
        except ValueError:
            return default

    async def search(request: Request) -> Response:
        query = text(request.query_params.get("q"))
        result = views.search_side_by_side(get_service(), query, k_of(request)) if query else None
        return page(request, "search.html", query=query, result=result)

    async def recommend(request: Request) -> Response:
        user_id = text(request.query_params.get("user_id"), 64)
        result = views.recommend_side_by_side(get_service(), user_id, k_of(request)) if user_id else None
        return page(request, "recommend.html", user_id=user_id, result=result)

    def rollout_page(request: Request, message: str | None = None, error: str | None = None, status: int = 200):
        p = paths()
        domains = views.rollout_overview(get_service(), p, links_for(p))
        return page(
            request,
            "rollout.html",
            status=status,
            domains=domains,
            runs=views.incubation_runs(p),
            message=message or text(request.query_params.get("msg"), 300),
            error=error,
        )

    async def rollout(request: Request) -> Response:
        return rollout_page(request)

    async def action(request: Request) -> Response:
        form = await request.form()
        try:
            security.check_same_origin(request.headers, request.url.scheme, request.headers.get("host"))
            security.check_csrf(request.cookies.get(security.CSRF_COOKIE), form.get("csrf"))
            security.check_token(form.get("token"))
            domain, verb = str(form.get("domain", "")), str(form.get("action", ""))
            operator, reason = text(form.get("operator"), 64), text(form.get("reason"), 300)
            if domain not in DOMAINS or verb not in actions.ACTIONS:
                raise security.Refused(400, f"refused: unknown domain {domain!r} or action {verb!r}")
            if not OPERATOR.match(operator):
                raise security.Refused(400, "refused: name the operator (letters, digits, space, . @ - _; 64 at most)")
            if form.get("confirm") != "yes":
                raise security.Refused(400, f"refused: tick the confirmation to {verb} the {domain} rollout")
        except security.Refused as exc:
            log.warning("console action refused: %s", exc.reason)
            return rollout_page(request, error=exc.reason, status=exc.status)
        try:
            state = actions.act(paths(), domain, verb, operator, reason)
        except ro.RolloutError as exc:  # a transition the state machine does not allow from this phase
            return rollout_page(request, error=f"{verb} {domain}: {exc}", status=409)
        except Exception as exc:  # noqa: BLE001 - a stale write, the registry: said on the page, never a bare 500
            log.exception("console: %s %s failed", verb, domain)
            reason = f"{verb} {domain} failed: {type(exc).__name__}: {exc}"[:500]
            return rollout_page(
                request,
                error=reason + " (a registry move left pending is finished by the next "
                "`python -m pipelines.rollout` command)",
                status=500,
            )
        rt = get_service().runtimes.get(domain)
        if rt is not None:
            rt.poll_state(force=True)  # this replica routes by the new state at once
        log.warning("console: %s %s by %s (%s) -> %s", verb, domain, operator, reason, state.phase)
        done = f"{verb} {domain} by {operator}: the rollout is now {state.phase}"
        base = request.scope.get("root_path", "").rstrip("/")
        return RedirectResponse(f"{base}/rollout?msg={quote(done)}", status_code=303)

    async def reports(request: Request) -> Response:
        return page(request, "reports.html", reports=views.reports_overview(paths()))

    async def files(request: Request) -> Response:
        """A report file under <root>/reports/{gates,incubation,data_checks}/, confined to that folder.

        root: a workspace's folder name (views.report_roots), or `_` for the outputs root. In the path, not
        the query, so the relative links inside a report (Data Docs' pages) stay under the same root.
        """
        kind, rel = request.path_params["kind"], request.path_params["path"]
        roots = {"gates": "gates", "incubation": "incubation", "data_checks": "data_checks"}
        if kind not in roots:
            return PlainTextResponse("not found", status_code=404)
        root = request.path_params["root"]
        base_paths = views.report_roots(paths()).get("" if root == ROOT else root)
        if base_paths is None:
            return PlainTextResponse("not found", status_code=404)
        folder = (base_paths.reports / roots[kind]).resolve()
        target = (folder / rel).resolve()
        if not target.is_relative_to(folder) or not target.is_file() or target.suffix not in _SERVED:
            return PlainTextResponse("not found", status_code=404)
        headers = {**security.SECURITY_HEADERS}
        # Report pages are self-contained (inline styles); their own scripts (Data Docs) may run, in a sandbox.
        headers["content-security-policy"] = (
            "default-src 'self' 'unsafe-inline' data:; frame-ancestors 'none'; sandbox allow-scripts"
        )
        return FileResponse(target, headers=headers, media_type=mimetypes.guess_type(target.name)[0])

    async def script(request: Request) -> Response:
        return FileResponse(HERE / "static" / "console.js", media_type="text/javascript")

    app = Starlette(
        routes=[
            Route("/", search),
            Route("/recommend", recommend),
            Route("/rollout", rollout),
            Route("/rollout/action", action, methods=["POST"]),
            Route("/reports", reports),
            Route("/files/{root}/{kind}/{path:path}", files),
            Route("/static/console.js", script),
        ]
    )
    return LoopbackOnly(app)


_SERVED = {".html", ".json", ".css", ".js", ".png", ".svg", ".txt"}


def _when(ts) -> str:
    import datetime as dt

    if not isinstance(ts, int | float):
        return "—"
    return dt.datetime.fromtimestamp(ts, tz=dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


class LoopbackOnly:
    """ASGI wrapper: 404 for a connection to a non-loopback address unless HATCHERY_CONSOLE_EXPOSE=1."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and not security.served_address_allowed(scope):
            body = b"the console answers on loopback only (set HATCHERY_CONSOLE_EXPOSE=1 to serve it elsewhere)"
            await send(
                {
                    "type": "http.response.start",
                    "status": 404,
                    "headers": [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())],
                }
            )
            await send({"type": "http.response.body", "body": body})
            return
        await self.app(scope, receive, send)
