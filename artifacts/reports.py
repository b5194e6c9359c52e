"""HTML pages from the Jinja2 templates in artifacts/templates/, shared by the steps that write them and
any console that serves them. Every page is self-contained (styles inline), so it opens the same from
an MLflow artifact, a copied run folder or a web server.

    base.html        the page frame and the one stylesheet
    checks.html      the table of gate checks (a macro both pages use)
    gate.html        one gate decision: `report`, the dict pipelines/gate.py writes to reports/gates/<domain>.json
    incubation.html  one lifecycle run: `summary`, `metrics`, `gate` (that report) and `budgets` (pipelines/report.py)

Usage:
    render("gate.html", report=report)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

TEMPLATES = Path(__file__).resolve().parent / "templates"


def fixed(value: Any) -> str:
    """A metric for a table cell: a float to 4 decimals, a (low, high) float pair as `[low, high]`, None as a dash."""
    if isinstance(value, float):
        return f"{value:.4f}"
    if isinstance(value, list | tuple) and len(value) == 2 and all(isinstance(x, float) for x in value):
        return f"[{value[0]:.4f}, {value[1]:.4f}]"
    return "—" if value is None else str(value)


def significant(value: Any) -> str:
    """A check's value or threshold to 4 significant digits (`nan` stays visible), None as a dash."""
    return "—" if value is None else f"{float(value):.4g}"


def render(template_name: str, **context: Any) -> str:
    """The page `template_name` (a file in artifacts/templates/) filled with `context`, every value escaped.

    A name the template uses but the context lacks raises (jinja2.UndefinedError) instead of rendering blank.
    """
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters["fixed"] = fixed
    env.filters["significant"] = significant
    return env.get_template(template_name).render(**context)
