"""train -> evaluate -> register -> bench for recommendation, on 200 real customers, tiny models."""

import json

import numpy as np
import pandas as pd
import pytest

from artifacts.recommend_bundle import load_recommend_bundle
from bench import recommend as bench_recommend
from pipelines import evaluate_recommend, register, train_recommend
from pipelines.common import load_params
from tests.pipelines._recommend_slice import write_recommend_slice

TINY = {
    "recommend.profiles.cpu.mf": {"dim": 8, "epochs": 2, "lr": 0.02, "reg": 0.0001, "batch_size": 4096},
    "recommend.profiles.cpu.user_encoder": {
        "dim": 8,
        "max_len": 20,
        "epochs": 1,
        "lr": 0.003,
        "batch_size": 256,
        "dropout": 0.1,
        "max_windows": 1,
    },
    "recommend.knn_k_grid": [10, 20],
    "recommend.ease_lambda_grid": [200.0],
    "recommend.ranker.n_estimators": 20,
    "recommend.ranker.min_data_in_leaf": 5,
    "recommend.bench_users": 20,
}


@pytest.fixture(scope="module")
def trained(tmp_path_factory, online_retail_raw):
    from artifacts.paths import Paths

    mp = pytest.MonkeyPatch()
    root = tmp_path_factory.mktemp("rec")
    mp.setenv("HATCHERY_HOME", str(root))
    mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
    paths = Paths(root=root)
    counts = write_recommend_slice(online_retail_raw, paths)
    # 12 monthly ranker folds before the valid cutoff (2011-10-09) reach back before the first purchase
    # (2010-12-01): the earliest are skipped, not fitted on an empty history.
    params = load_params(overrides={**TINY, "recommend.ranker_folds": 12})
    selection = train_recommend.run(params, paths)
    yield params, paths, selection, counts
    mp.undo()


@pytest.mark.slow
def test_train_writes_a_loadable_bundle(trained):
    params, paths, selection, counts = trained
    assert counts["users"] >= 150
    assert selection["item_knn_k"] in (10, 20) and selection["ease_lambda"] == 200.0
    for name in ("rerank", "mf", "user_encoder", "own_frequency", "popularity", "item_knn", "ease"):
        assert 0.0 <= selection["valid"][name]["recall_at_20"] <= 1.0
    bundle = paths.models / "recommend" / "bundle"
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert {"ranker.txt", "mf.safetensors", "user_encoder.safetensors", "profiles.parquet", "popular.json"} <= set(
        manifest["files"]
    )
    model = load_recommend_bundle(bundle)
    user = str(model.state.users[0])
    recs = model.recommend(user, k=5)
    assert len(recs) == 5 and {r["source"] for r in recs} <= {"ranker", "popular"}
    assert model.recommend("unknown-user", k=3)[0]["source"] == "popular"
    assert model.profile(user)["frequency"] >= 1
    # A state fitted on history before T never sees the test window.
    hist = pd.read_parquet(paths.split / "recommend" / "test" / "history.parquet")
    assert pd.Timestamp(manifest["as_of"]) > hist["timestamp"].max()


@pytest.mark.slow
def test_the_encoder_bench_reproduces_the_pipelines_valid_number(trained):
    from pydantic import ValidationError

    from bench.user_encoder import encoder_recall

    params, paths, selection, _ = trained
    out = encoder_recall(params, paths, [{}, {"horizon_days": 0.0}])
    valid = selection["valid"]
    assert 0.0 <= out["knn"] <= 1.0  # the state's kNN generator (knn_neighbours), not the tuned baseline
    assert out["tifu_knn"] == pytest.approx(valid["tifu_knn"]["recall_at_20"], abs=1e-9)
    # Same data, settings and seed as train_recommend's valid fold: the same encoder, the same number.
    assert out["{}"] == pytest.approx(valid["user_encoder"]["recall_at_20"], abs=1e-9)
    assert 0.0 <= out['{"horizon_days": 0.0}'] <= 1.0
    with pytest.raises(ValidationError):
        encoder_recall(params, paths, [{"epoch": 3}])  # a misspelt setting is refused, not ignored


@pytest.mark.slow
def test_the_ranker_bench_reproduces_the_pipelines_valid_number(trained):
    from bench.rec_ranker import ranker_recall
    from components.config import ParamsError

    params, paths, selection, _ = trained
    out = ranker_recall(params, paths, [{}, {"objective": "lambdarank"}], [params.seed, params.seed + 1])
    assert out["{}"][0] == pytest.approx(selection["valid"]["rerank"]["recall_at_20"], abs=1e-9)
    assert all(0.0 <= r <= 1.0 for r in out['{"objective": "lambdarank"}'])
    with pytest.raises(ParamsError, match="num_leave"):
        ranker_recall(params, paths, [{"num_leave": 7}], [0])  # a misspelt setting is refused, not ignored


@pytest.mark.slow
def test_ranker_folds_before_the_history_begins_are_skipped_and_said(trained, caplog):
    _, paths, selection, _ = trained
    folds = selection["selection_fold"]
    first_purchase = pd.read_parquet(paths.split / "recommend" / "valid" / "history.parquet")["timestamp"].min()
    assert folds["skipped_cutoffs"] and all(pd.Timestamp(c) <= first_purchase for c in folds["skipped_cutoffs"])
    assert folds["ranker_folds"] == len(folds["cutoffs"]) == 12 - len(folds["skipped_cutoffs"]) >= 6
    assert all(pd.Timestamp(c) > first_purchase for c in folds["cutoffs"])


@pytest.mark.slow
def test_a_history_too_short_for_any_ranker_fold_stops_with_the_reason(tmp_path, online_retail_raw, monkeypatch):
    from artifacts.paths import Paths

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    paths = Paths(root=tmp_path)
    write_recommend_slice(online_retail_raw, paths)
    params = load_params(overrides={**TINY, "recommend.selection_window_days": 400, "recommend.ranker_folds": 1})
    with pytest.raises(ValueError, match="no ranker fold has 2 users .* 400-day window"):
        train_recommend.run(params, paths)
    assert not (paths.models / "recommend" / "bundle").exists()  # nothing half-written


@pytest.mark.slow
def test_evaluate_reports_every_model_and_per_user_rows(trained):
    params, paths, _, _ = trained
    out = evaluate_recommend.run(params, paths)
    saved = json.loads((paths.metrics / "recommend.json").read_text())
    assert saved["primary"] == "rerank"
    for name in ("rerank", "mf", "user_encoder", "popularity", "own_frequency", "item_knn", "ease"):
        m = saved["models"][name]
        assert {"recall_at_20", "recall_at_20_ci", "ndcg_at_20", "ndcg_at_20_ci", "coverage"} <= set(m)
        assert m["recall_at_20_ci"][0] <= m["recall_at_20"] <= m["recall_at_20_ci"][1]
    per_user = pd.read_parquet(paths.models / "recommend" / "eval" / "per_user.parquet")
    assert len(per_user) == out["users"] and set(per_user["buyer_segment"]) <= {"light", "heavy"}
    assert np.isclose(per_user["rerank__recall_at_20"].mean(), saved["models"]["rerank"]["recall_at_20"])
    assert (paths.models / "recommend" / "plots" / "models.png").exists()


@pytest.mark.slow
def test_an_exhausted_training_budget_stops_cleanly_and_says_so(tmp_path, online_retail_raw, monkeypatch):
    from artifacts.paths import Paths
    from pipelines.budget import budget_env

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    for key, value in budget_env(cpu_minutes=0.0, gpu_hours=0.0, started_at=0.0).items():
        monkeypatch.setenv(key, value)
    paths = Paths(root=tmp_path)
    write_recommend_slice(online_retail_raw, paths)
    selection = train_recommend.run(load_params(overrides=TINY), paths)
    assert selection["budget"]["exhausted"] is True
    assert selection["final_ranker"]["ranker_best_iteration"] <= 1
    assert load_recommend_bundle(paths.models / "recommend" / "bundle").recommend("nobody", k=3)


@pytest.mark.slow
def test_register_is_idempotent_and_bench_runs(trained):
    params, paths, _, _ = trained
    first = register.run("recommend", params, paths)
    again = register.run("recommend", params, paths)
    assert first["created"] and not again["created"] and again["version"] == first["version"]
    saved = json.loads((paths.models / "recommend" / "registered.json").read_text())
    assert saved["version"] == first["version"]
    import mlflow

    v = mlflow.MlflowClient().get_model_version("hatchery-recommend", str(first["version"]))
    assert {"data_version", "git_commit", "bundle_hash"} <= set(v.tags)
    model = mlflow.pyfunc.load_model(f"models:/hatchery-recommend/{first['version']}")
    user = str(load_recommend_bundle(paths.models / "recommend" / "bundle").state.users[0])
    pred = model.predict(pd.DataFrame({"user_id": [user, "nobody"], "k": [3, 2]}))
    assert len(pred) == 5 and set(pred["source"]) <= {"ranker", "popular"}
    result = bench_recommend.run(params, paths)
    assert result["recommend_known_user"]["median_ms"] > 0


@pytest.mark.slow
def test_cost_curve_refit_scores_like_the_bundle(trained):
    """bench.cost_curves scores larger event logs by refitting the generators on that log and re-ranking with
    the bundle's booster; on the bundle's own log the refit must rank every user as the bundle does."""
    from bench import cost_curves

    params, paths, _, _ = trained
    bundle = cost_curves.load_served(paths.models / "recommend" / "bundle")
    row = cost_curves.recommend_costs_at_scale(params, bundle, paths.root, 1, 20)
    assert row["known_users_in_model"] == len(bundle.state.users) and row["users_timed"] == 20
    assert row["online_cpu_s_per_1000_users"] > 0 and row["refit_cpu_s"] >= 0
    refit = cost_curves.refit_model(params, bundle, paths.root)
    users = [str(u) for u in bundle.state.users[:30]]
    assert refit.rank_users(users, 10) == bundle.rank_users(users, 10)
