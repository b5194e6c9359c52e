import pytest
from pydantic import ValidationError

from artifacts.paths import REPO_ROOT
from components.config import ParamsError, apply_overrides, parse_params
from pipelines.common import load_params


def test_repository_params_parse():
    params = load_params(REPO_ROOT / "params.yaml")
    assert params.data.search.source == "homedepot"


def test_unknown_key_is_named_by_its_path():
    with pytest.raises(ParamsError, match=r"data\.search\.paht: unknown key"):
        parse_params({"data": {"search": {"source": "homedepot", "paht": "/x"}}})


def test_canonical_source_requires_a_path():
    with pytest.raises(ParamsError, match="needs 'path'"):
        parse_params({"data": {"search": {"source": "canonical"}}})


def test_overlapping_split_buckets_are_rejected():
    with pytest.raises(ParamsError, match="overlap"):
        parse_params({"split": {"search_valid_buckets": [9], "search_test_buckets": [9]}})


def test_params_are_frozen():
    params = parse_params({})
    with pytest.raises(ValidationError, match="frozen"):
        params.seed = 3


def test_dotted_overrides():
    raw = apply_overrides({"data": {"search": {"source": "homedepot"}}}, {"data.search.path": "/tmp/x", "seed": 4})
    assert raw == {"data": {"search": {"source": "homedepot", "path": "/tmp/x"}}, "seed": 4}


def test_both_domains_share_one_profile_shape():
    params = load_params(REPO_ROOT / "params.yaml")
    assert set(params.search.profiles) == set(params.recommend.profiles) == {"cpu", "gpu"}
    gpu = parse_params({"search": {"profile": "gpu"}, "recommend": {"profile": "gpu"}})
    assert gpu.search.training == gpu.search.profiles["gpu"] and gpu.search.training.train_product_tower
    assert gpu.recommend.training == gpu.recommend.profiles["gpu"] and gpu.recommend.training.mf.dim == 128


@pytest.mark.parametrize("domain", ["search", "recommend"])
def test_a_profile_missing_from_profiles_is_named(domain):
    with pytest.raises(ParamsError, match=rf"{domain}: .*profile 'gpu' not in profiles \['cpu'\]"):
        parse_params({domain: {"profile": "gpu", "profiles": {"cpu": {}}}})


def test_rollout_section_rejects_unknown_keys_like_the_others():
    with pytest.raises(ParamsError, match=r"rollout\.sesions: unknown key"):
        parse_params({"rollout": {"sesions": 10}})


def test_moved_keys_name_their_new_place():
    with pytest.raises(ParamsError, match=r"checks: .*relevance_max moved to data\.search\.relevance\.max"):
        parse_params({"checks": {"relevance_max": 4.0}})
    with pytest.raises(ParamsError, match=r"split: .*recommend_test_cutoff moved to data\.recommend\.test_cutoff"):
        parse_params({"split": {"recommend_test_cutoff": None}})


def test_the_judgment_scale_is_checked_and_defaults_to_evaluation_md():
    scale = parse_params({}).data.search.relevance
    assert (scale.min, scale.max, scale.relevant_from, scale.gain) == (1.0, 3.0, 2.5, "linear")
    assert scale.gain_of(2.5) == 1.5 and scale.max_gain == 2.0 and scale.grade_at(0.5) == 2.0
    with pytest.raises(ParamsError, match=r"data\.search\.relevance: .*relevant_from \(5\.0\) must lie in"):
        parse_params(
            {"data": {"search": {"source": "canonical", "path": "x", "relevance": {"max": 4, "relevant_from": 5}}}}
        )


def test_a_shop_s_cutoffs_are_both_set_or_both_null_and_default_to_evaluation_md_for_online_retail():
    rec = parse_params({}).data.recommend
    assert (rec.test_cutoff.isoformat(), rec.valid_cutoff.isoformat()) == ("2011-11-09T00:00:00", "2011-10-09T00:00:00")
    own = parse_params({"data": {"recommend": {"source": "canonical", "path": "/shop"}}}).data.recommend
    assert own.test_cutoff is None and own.valid_cutoff is None
    with pytest.raises(ParamsError, match=r"data\.recommend: .*both set or both null"):
        parse_params({"data": {"recommend": {"source": "canonical", "path": "/x", "test_cutoff": "2023-06-01"}}})


def test_pii_policy_per_table_or_one_for_all():
    assert parse_params({}).checks.pii.model_dump() == {"queries": "reject", "catalog": "redact"}
    assert parse_params({"checks": {"pii": "redact"}}).checks.pii.queries == "redact"
    with pytest.raises(ParamsError, match=r"checks\.pii\.catalog"):
        parse_params({"checks": {"pii": {"catalog": "drop"}}})


def test_params_yaml_keeps_its_formatting_through_dvc_exp_run_set_param(tmp_path):
    """`dvc exp run -S` writes params.yaml back through ruamel: only the set lines may change."""
    from dvc.utils.hydra import apply_overrides as dvc_set

    path = tmp_path / "params.yaml"
    original = (REPO_ROOT / "params.yaml").read_text()
    path.write_text(original)
    dvc_set(path, ["data.search.path=/data/myshop", "data.recommend.test_cutoff=null", "search.ranker.num_leaves=63"])
    before, after = original.splitlines(), path.read_text().splitlines()
    assert len(before) == len(after)
    changed = [(a, b) for a, b in zip(before, after, strict=True) if a != b]
    # a line's comment stays (ruamel may move it to keep its column); the values are what changed
    comments = [(a.partition(" #")[2].strip(), b.partition(" #")[2].strip()) for a, b in changed]
    assert all(a == b for a, b in comments), comments
    leaves = load_params(REPO_ROOT / "params.yaml").search.ranker.num_leaves
    assert [(a.partition(" #")[0].strip(), b.partition(" #")[0].strip()) for a, b in changed] == [
        ("path: ../shared/datasets/homedepot", "path: /data/myshop"),
        ("test_cutoff: '2011-11-09T00:00:00'", "test_cutoff:"),
        (f"num_leaves: {leaves}", "num_leaves: 63"),
    ]
