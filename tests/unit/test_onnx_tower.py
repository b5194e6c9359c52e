"""The ONNX query tower answers with PyTorch's vectors, and an export that disagrees is refused."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from components.encoder import encode_texts
from components.onnx_tower import OnnxQueryTower, export_query_tower

QUERIES = ["cordless drill", "1/2 in. pvc pipe 10 ft", "", "lampe de bureau à LED – café", "€€€ !!!", "x " * 200]


@pytest.fixture(scope="module")
def encoder():
    from components.encoder import load_encoder

    return load_encoder(device=torch.device("cpu"))


@pytest.fixture(scope="module")
def exported(encoder, tmp_path_factory):
    enc, tok = encoder
    path = tmp_path_factory.mktemp("onnx") / "query_tower.onnx"
    diff = export_query_tower(enc, tok, path, QUERIES[:2], max_length=24)
    return path, diff


def test_export_reports_a_rounding_level_difference(exported) -> None:
    path, diff = exported
    assert path.exists() and not path.with_name(path.name + ".tmp").exists()
    assert 0.0 <= diff < 1e-5


def test_onnx_vectors_equal_pytorch_on_edge_case_queries(encoder, exported) -> None:
    enc, tok = encoder
    got = OnnxQueryTower(exported[0], tok).encode(QUERIES, batch_size=4, max_length=24)
    want = encode_texts(enc, tok, QUERIES, batch_size=4, max_length=24)
    assert got.shape == want.shape == (len(QUERIES), enc.config.hidden_size)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(got, want, atol=1e-5)
    # one query at a time (the serving path) gives the same rows as the padded batch
    single = np.vstack([OnnxQueryTower(exported[0], tok).encode([q], max_length=24) for q in QUERIES])
    np.testing.assert_allclose(single, got, atol=1e-5)


def test_session_follows_the_torch_thread_setting(encoder, exported) -> None:
    _, tok = encoder
    tower = OnnxQueryTower(exported[0], tok)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        tower.encode(["drill"])
        first = tower._session
        tower.encode(["saw"])
        assert tower._session is first and tower._threads == 1
        torch.set_num_threads(2)
        tower.encode(["drill"])
        assert tower._session is not first and tower._threads == 2
    finally:
        torch.set_num_threads(before)


def test_a_disagreeing_graph_is_refused_and_not_written(encoder, tmp_path, monkeypatch) -> None:
    enc, tok = encoder
    real = OnnxQueryTower.encode
    monkeypatch.setattr(OnnxQueryTower, "encode", lambda self, *a, **kw: real(self, *a, **kw) + 0.01)
    path = tmp_path / "query_tower.onnx"
    with pytest.raises(ValueError, match="disagrees with PyTorch"):
        export_query_tower(enc, tok, path, QUERIES[:2], max_length=24)
    assert list(tmp_path.iterdir()) == []
