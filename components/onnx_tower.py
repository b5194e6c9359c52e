"""The query tower as an ONNX graph run by ONNX Runtime: the CPU serving path of the search encoder.

Why: one short query through all-MiniLM-L6-v2 in eager PyTorch costs ~10-19 ms on these 2 cores, almost
all of it per-operator dispatch; the same graph in ONNX Runtime takes ~3.5 ms and returns the same
vectors (fp32, max |difference| ~1e-7). Batch encoding (the catalog pass) is compute-bound and gains
nothing, so only the query tower is exported. int8 weights would halve it again but move the vectors
(cosine ~0.97 to fp32), which the offline evaluation would then have to score: not done.

The graph includes mean pooling and L2 normalisation, so its output is the unit query vector that
`components.encoder.encode_texts` computes. `export_query_tower` checks that on probe texts and refuses
to write a graph that disagrees.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from components.encoder import encode_texts, mean_pool

ONNX_OPSET = 17
MAX_ABS_DIFF = 1e-4  # fp32 vs fp32: anything above this is an export bug, not rounding


class _Pooled(torch.nn.Module):
    """Transformer + mean pooling + L2 norm: (input_ids, attention_mask) -> (batch, dim) unit rows."""

    def __init__(self, model) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return torch.nn.functional.normalize(mean_pool(hidden.float(), attention_mask), dim=-1)


def export_query_tower(model, tokenizer, path: Path | str, probe_texts: Sequence[str], max_length: int) -> float:
    """Write the tower as ONNX to `path`; returns the max |ONNX - PyTorch| over the probe texts' vectors.

    Raises ValueError (and writes nothing) when the graph's vectors differ by more than MAX_ABS_DIFF.
    """
    import copy
    import warnings

    path = Path(path)
    # Exported from a copy: tracing leaves the traced module's attention path altered (its own padded
    # batches then drift by ~0.07), and the caller's model must stay on its device, untouched.
    traced = copy.deepcopy(model).to("cpu").eval()
    # Traced on a padded pair, so the recorded graph is the one that applies the attention mask (an
    # all-ones example can let the model skip masking while tracing); tests compare padded batches
    # with single queries.
    sample = tokenizer(["a query", "a longer query with more words"], padding=True, return_tensors="pt")
    tmp = path.with_name(path.name + ".tmp")
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the TorchScript exporter's advisory warnings (advanced indexing)
        torch.onnx.export(
            _Pooled(traced),
            (sample["input_ids"], sample["attention_mask"]),
            str(tmp),
            input_names=["input_ids", "attention_mask"],
            output_names=["embedding"],
            dynamic_axes={
                "input_ids": {0: "batch", 1: "seq"},
                "attention_mask": {0: "batch", 1: "seq"},
                "embedding": {0: "batch"},
            },
            opset_version=ONNX_OPSET,
            dynamo=False,
        )
    texts = list(probe_texts) or ["a query"]
    got = OnnxQueryTower(tmp, tokenizer).encode(texts, max_length=max_length)
    on_cpu = next(model.parameters()).device.type == "cpu"
    reference = model if on_cpu else copy.deepcopy(model).to("cpu")  # CUDA would compare bf16 with fp32
    want = encode_texts(reference, tokenizer, texts, batch_size=64, max_length=max_length)
    diff = float(np.abs(got - want).max())
    if diff > MAX_ABS_DIFF:
        tmp.unlink()
        raise ValueError(f"ONNX query tower disagrees with PyTorch: max |diff| {diff:.2e} > {MAX_ABS_DIFF:.0e}")
    tmp.replace(path)
    return diff


class OnnxQueryTower:
    """encode(texts) -> (n, dim) float32 unit rows, from an exported graph and its tokenizer.

    The session's intra-op threads follow torch.get_num_threads() at call time (the serving runtime
    caps both with one setting); a change rebuilds the session. Safe to call from several threads.
    """

    def __init__(self, path: Path | str, tokenizer) -> None:
        self.path = str(path)
        self.tokenizer = tokenizer
        self._session = None
        self._threads = -1

    def _get_session(self):
        import onnxruntime as ort

        threads = torch.get_num_threads()
        session = self._session
        if session is None or threads != self._threads:
            options = ort.SessionOptions()
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            # No spin-waiting between runs: FAISS, LightGBM and torch share these cores right after each
            # encode, and ORT's spinning workers slowed a whole search from 18 to 40 ms (2 threads).
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            session = ort.InferenceSession(self.path, options, providers=["CPUExecutionProvider"])
            self._session, self._threads = session, threads
        return session

    def encode(self, texts: Sequence[str], batch_size: int = 256, max_length: int = 24) -> np.ndarray:
        """Same contract as encode_texts: input order kept, empty text embedded as a single space."""
        session = self._get_session()
        texts = [str(t) if t else " " for t in texts]
        order = np.argsort([len(t) for t in texts], kind="stable")
        out = None
        for start in range(0, len(texts), batch_size):
            idx = order[start : start + batch_size]
            batch = self.tokenizer(
                [texts[i] for i in idx], padding=True, truncation=True, max_length=max_length, return_tensors="np"
            )
            vecs = session.run(
                None,
                {
                    "input_ids": batch["input_ids"].astype(np.int64),
                    "attention_mask": batch["attention_mask"].astype(np.int64),
                },
            )[0]
            if out is None:
                out = np.zeros((len(texts), vecs.shape[1]), dtype=np.float32)
            out[idx] = vecs
        return out if out is not None else np.zeros((0, 0), dtype=np.float32)
