"""bench_text_fields: search over every configured catalog text field vs titles only, side by side in one run.

    python -m bench.text_fields [--root DIR]

For each setting of search.text_fields (as configured; titles only) the whole search chain of a root
with validated and split search data (default: the repository's outputs): embed_catalog, train_encoder,
build_index, train_ranker, evaluate_search, each setting in a scratch root under
reports/bench/text_fields/ (the setting the root's own bundle was trained with is read, not retrained).
Prints EVALUATION.md's full-catalog NDCG@10 and Recall@100 of BM25, the zero-shot encoder and the
hybrid ranker, and the CPU seconds of the catalog pass (all threads; the pretrained product tower over
every product text). Settings that join the same columns are one setting: a catalog with titles only
(Home Depot) prints one row.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
from pathlib import Path

from artifacts.files import write_json
from artifacts.paths import Paths
from components import schema as s
from components.config import Params, apply_overrides, parse_params
from pipelines.common import load_params
from pipelines.io import read_table

log = logging.getLogger(__name__)

MODELS = ("bm25", "zero_shot", "hybrid_ranker")
SEARCH_DATA = ("validated/search", "split/search")


def _with_fields(params: Params, fields: list[str]) -> Params:
    return parse_params(apply_overrides(params.model_dump(mode="json"), {"search.text_fields": fields}))


def _train_search(params: Params, paths: Paths) -> None:
    from pipelines import build_index, embed_catalog, evaluate_search, train_encoder, train_ranker

    embed_catalog.run(params, paths)
    train_encoder.run(params, paths, progress=False)
    build_index.run(params, paths)
    train_ranker.run(params, paths)
    evaluate_search.run(params, paths)


def _trained_with(paths: Paths) -> list[str] | None:
    """The text fields the root's search bundle and metrics were made with, if it has both."""
    manifest = paths.bundle("search") / "manifest.json"
    if not manifest.exists() or not paths.metrics_file("search").exists():
        return None
    return json.loads(manifest.read_text()).get("text_fields", [s.TITLE])


def run(params: Params, paths: Paths) -> dict:
    """{setting: {fields, catalog_pass_cpu_seconds, <model>: {ndcg_at_10, recall_at_100}}}; also printed
    and written to <root>/reports/bench/text_fields.json."""
    catalog = read_table(paths.validated / "search", s.CATALOG)
    settings: dict[str, list[str]] = {}
    for name, fields in (("all_fields", list(params.search.text_fields)), ("titles_only", [s.TITLE])):
        present = s.text_fields_present(catalog, fields)
        if present not in settings.values():
            settings[name] = present
    scratch = paths.reports / "bench" / "text_fields"
    results: dict[str, dict] = {}
    for name, fields in settings.items():
        if _trained_with(paths) == fields:
            root = paths
        else:
            root = Paths(root=scratch / name)
            for sub in SEARCH_DATA:
                shutil.rmtree(root.data / sub, ignore_errors=True)
                shutil.copytree(paths.data / sub, root.data / sub)
            _train_search(_with_fields(params, fields), root)
        report = json.loads(root.metrics_file("search").read_text())
        embed = json.loads((root.embeddings / "meta.json").read_text())
        results[name] = {
            "fields": fields,
            "catalog_pass_cpu_seconds": embed.get("cpu_seconds"),
            "catalog_pass_seconds": embed.get("seconds"),
            "products": embed.get("n"),
            **{m: {k: report["models"][m][k] for k in ("ndcg_at_10", "recall_at_100")} for m in MODELS},
        }
    print(_table(results))
    write_json(paths.bench("text_fields"), results)
    return results


def _table(results: dict[str, dict]) -> str:
    head = "setting       fields                              " + "".join(f"{m + ' ndcg/recall':>27}" for m in MODELS)
    lines = [head + "   catalog pass CPU s"]
    for name, r in results.items():
        cells = "".join(f"{r[m]['ndcg_at_10']:>17.3f} / {r[m]['recall_at_100']:.3f}" for m in MODELS)
        lines.append(f"{name:<13} {','.join(r['fields']):<35}{cells}   {r['catalog_pass_cpu_seconds']:>8}")
    return "\n".join(lines)


if __name__ == "__main__":
    from pipelines.common import configure_logging

    configure_logging()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, default=None, help="outputs root with validated and split search data")
    args = ap.parse_args()
    run(load_params(), Paths(root=args.root) if args.root else Paths())
