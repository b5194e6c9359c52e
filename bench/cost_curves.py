"""Benchmark: cost curves at 1x, 10x and 100x the shipped data, printed as tables (not a test, not a DVC stage).

    python -m bench.cost_curves                     # everything at 1x, 2x, 10x (~10 CPU-minutes; ~4 GiB)
    python -m bench.cost_curves --only index --scales 100     # 5.5 M products (exact float16: ~5 GiB free)
    python -m bench.cost_curves --toy               # seconds: the same code on a tiny random catalog

Sections (each row of each table says how it was measured):

index      search p50/p99 latency (one query at a time, one thread, as the service calls it), memory and
           recall@100 against exact float32 search, for exact, HNSW and IVF-PQ indexes over 1x, 10x and 100x
           the Home Depot catalog. 1x is the real catalog's pretrained all-MiniLM-L6-v2 embeddings
           (models/search/embeddings when present, else computed once and cached under
           reports/bench/cost_curves/); copy c > 0 of a larger catalog is every real vector plus Gaussian
           noise (sigma per dimension, seeded by c), renormalised: fine for cost, never for quality.
           Probe queries: real Home Depot queries of the valid split, embedded with the same encoder.
           100x (5.5 M x 384) is built chunk by chunk so it never holds float32 vectors: exact search runs
           over float16 (IndexScalarQuantizer fp16, brute force), ground truth is float32 computed per
           chunk; IVF-PQ (nprobe 16) is built there too, from the same chunks. HNSW is built at 1x, 2x
           and 10x and extrapolated to 100x (`hnsw_extrapolation`; `specs_for` says why not built).
           Times are CPU time (what the work costs on a core of its own) with wall time beside it.
embed      catalog embedding throughput of the pretrained encoder per worker (1 and 2 torch threads) on
           real titles and on synthetic titles drawn from the real title vocabulary and length mix.
data       ingest + validate + split wall time and peak RSS at 1x and 10x the Online Retail event log (10x:
           ten copies of every customer under new ids, same products and dates), each step a fresh
           process in a temporary HATCHERY_HOME; peak RSS is the child's own VmHWM (its ru_maxrss would
           start at this process's size: Linux carries the forked parent's high-water mark over exec).
recommend  scoring time per 1,000 users of the recommendation bundle (models/recommend/bundle, else one
           trained by train_recommend on the 1x data of the `data` section), one thread: one request at
           a time (as served) and in batches (RecommendModel.rank_users).

Results: reports/bench/cost_curves.json (and the printed Markdown tables, which README's "Cost curves"
and docs/scaling.md quote).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from artifacts.files import write_json
from artifacts.paths import REPO_ROOT, Paths

log = logging.getLogger(__name__)

K = 100
GIB = 1024**3
MIB = 1024**2


# --- synthetic catalogs ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Catalog:
    """A catalog of `copies` x len(base) unit vectors, generated chunk by chunk (never all in memory)."""

    base: np.ndarray  # float32 (n, dim), unit rows: copy 0, the real embeddings
    copies: int
    sigma: float = 0.03
    seed: int = 0

    @property
    def n(self) -> int:
        return len(self.base) * self.copies

    @property
    def dim(self) -> int:
        return int(self.base.shape[1])

    def chunk(self, c: int) -> np.ndarray:
        """Copy c: the real vectors (c = 0) or each real vector plus N(0, sigma^2) noise, renormalised."""
        if c == 0:
            return self.base
        rng = np.random.default_rng([self.seed, c])
        x = self.base + rng.standard_normal(self.base.shape, dtype=np.float32) * np.float32(self.sigma)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        return x

    def chunks(self) -> Iterator[np.ndarray]:
        for c in range(self.copies):
            yield self.chunk(c)

    def sample(self, n: int, seed: int = 0) -> np.ndarray:
        """n rows spread over the copies (an IVF training set)."""
        rng = np.random.default_rng(seed)
        per = max(1, n // self.copies)
        parts = []
        for c in range(self.copies):
            rows = rng.choice(len(self.base), size=min(per, len(self.base)), replace=False)
            parts.append(self.chunk(c)[rows])
            if sum(len(p) for p in parts) >= n:
                break
        return np.ascontiguousarray(np.concatenate(parts)[:n])


def exact_topk(catalog: Catalog, queries: np.ndarray, k: int = K) -> np.ndarray:
    """Ground truth: float32 brute-force top-k ids (n_queries, k), merged chunk by chunk."""
    nq = len(queries)
    best_s = np.full((nq, 0), -np.inf, dtype=np.float32)
    best_i = np.zeros((nq, 0), dtype=np.int64)
    for c, x in enumerate(catalog.chunks()):
        s = queries @ x.T
        kk = min(k, s.shape[1])
        part = np.argpartition(-s, kk - 1, axis=1)[:, :kk]
        cand_s = np.concatenate([best_s, np.take_along_axis(s, part, axis=1)], axis=1)
        cand_i = np.concatenate([best_i, part + c * len(catalog.base)], axis=1)
        keep = np.argsort(-cand_s, axis=1, kind="stable")[:, :k]
        best_s, best_i = np.take_along_axis(cand_s, keep, axis=1), np.take_along_axis(cand_i, keep, axis=1)
    return best_i


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean |found ∩ truth| / |truth| per query row."""
    return float(np.mean([len(set(f.tolist()) & set(t.tolist())) / len(t) for f, t in zip(found, truth, strict=True)]))


# --- index costs ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class IndexSpec:
    kind: str  # exact | exact-fp16 | hnsw | ivfpq
    params: dict[str, Any]

    @property
    def label(self) -> str:
        p = ",".join(f"{k}={v}" for k, v in self.params.items())
        return f"{self.kind}({p})" if p else self.kind


def ivf_lists(n: int) -> int:
    """IVF lists: about sqrt(n) as a power of two, 16..2048 (k-means on 2 shared cores stays ~minutes)."""
    return int(min(2048, max(16, 2 ** int(np.round(np.log2(np.sqrt(max(n, 1))))))))


def ivf_train_size(n: int, nlist: int) -> int:
    """32 training vectors per list (FAISS warns below 39; the recall column shows what that costs)."""
    return int(min(n, 32 * nlist, 65_536))


def make_index(spec: IndexSpec, dim: int, train: np.ndarray | None):
    import faiss

    if spec.kind == "exact":
        return faiss.IndexFlatIP(dim)
    if spec.kind == "exact-fp16":
        return faiss.IndexScalarQuantizer(dim, faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_INNER_PRODUCT)
    if spec.kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, spec.params["M"], faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = spec.params["efC"]
        index.hnsw.efSearch = spec.params["efS"]
        return index
    if spec.kind == "ivfpq":
        # The coarse quantizer is itself an HNSW over the list centroids: assigning 5 M vectors to 2,048
        # lists by brute force would cost more than everything else in this benchmark.
        index = faiss.index_factory(
            dim, f"IVF{spec.params['nlist']}_HNSW32,PQ{spec.params['m']}", faiss.METRIC_INNER_PRODUCT
        )
        ivf = faiss.downcast_index(faiss.extract_index_ivf(index))
        ivf.cp.niter = 10
        ivf.pq.cp.niter = 10
        ivf.do_polysemous_training = False  # simulated annealing for Hamming search, which we do not use
        index.train(train)
        ivf.nprobe = spec.params["nprobe"]
        return index
    raise ValueError(spec.kind)


def index_bytes(index, spec: IndexSpec, n: int, dim: int) -> int:
    """What the index holds in memory: the serialised size (its arrays), or n*dim*bytes for flat indexes
    (serialising 4 GiB to measure it would double the benchmark's peak)."""
    import faiss

    if spec.kind == "exact":
        return n * dim * 4
    if spec.kind == "exact-fp16":
        return n * dim * 2
    return int(faiss.serialize_index(index).size)


def time_queries(index, queries: np.ndarray, k: int = K, warmup: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """(CPU ms, wall ms) per query, one query at a time on one thread (the service's one intra-op thread).

    CPU time is the calling thread's (time.thread_time): on a machine shared with other jobs the wall time
    mostly measures the wait for a core, while the CPU time is what the query costs on a core of its own."""
    import faiss

    faiss.omp_set_num_threads(1)
    for q in queries[:warmup]:
        index.search(q[None, :], k)
    cpu, wall = [], []
    for q in queries:
        c0, t0 = time.thread_time(), time.perf_counter()
        index.search(q[None, :], k)
        cpu.append((time.thread_time() - c0) * 1000)
        wall.append((time.perf_counter() - t0) * 1000)
    return np.asarray(cpu), np.asarray(wall)


def rss_bytes() -> int:
    import psutil

    return int(psutil.Process().memory_info().rss)


def index_costs(
    catalog: Catalog,
    specs: list[IndexSpec],
    probes: np.ndarray,
    latency_queries: int,
    scale: int,
    threads: int = 1,
    truth_probes: int | None = None,
) -> list[dict[str, Any]]:
    """Build each index over the catalog (chunk by chunk) on `threads` threads, then its latency (one
    thread), memory and recall@100."""
    import faiss

    faiss.omp_set_num_threads(threads)
    t0 = time.perf_counter()
    recall_probes = probes if truth_probes is None else probes[:truth_probes]
    truth = exact_topk(catalog, recall_probes) if len(recall_probes) else None
    truth_s = time.perf_counter() - t0
    log.info("%dx: ground truth for %d probes in %.0f s", scale, len(recall_probes), truth_s)
    rows = []
    for spec in specs:
        rss0 = rss_bytes()
        c0, t0 = time.process_time(), time.perf_counter()
        train = None
        if spec.kind == "ivfpq":
            train = catalog.sample(ivf_train_size(catalog.n, spec.params["nlist"]), seed=catalog.seed)
        index = make_index(spec, catalog.dim, train)
        train_s = time.perf_counter() - t0
        for x in catalog.chunks():
            index.add(x)
        build_s, build_cpu_s = time.perf_counter() - t0, time.process_time() - c0
        nq = latency_queries if catalog.n * catalog.dim <= 250_000_000 else min(latency_queries, 10)
        ms, wall_ms = time_queries(index, probes[:nq])
        faiss.omp_set_num_threads(threads)
        recall = float("nan")
        if truth is not None:
            _, found = index.search(recall_probes, K)
            recall = recall_at_k(found, truth)
        row = {
            "scale": scale,
            "n": catalog.n,
            "index": spec.label,
            "kind": spec.kind,
            "build_s": round(build_s, 1),
            "build_cpu_s": round(build_cpu_s, 1),
            "build_threads": threads,
            "train_s": round(train_s, 1),
            "memory_mib": round(index_bytes(index, spec, catalog.n, catalog.dim) / MIB, 1),
            "rss_growth_mib": round((rss_bytes() - rss0) / MIB, 1),
            "p50_ms": round(float(np.median(ms)), 3),
            "p99_ms": round(float(np.percentile(ms, 99)), 3),
            "wall_p50_ms": round(float(np.median(wall_ms)), 3),
            "wall_p99_ms": round(float(np.percentile(wall_ms, 99)), 3),
            "latency_queries": int(nq),
            "recall_at_100": round(recall, 4),
            "probe_queries": len(recall_probes),
            "ground_truth_s": round(truth_s, 1),
        }
        log.info("%s", row)
        rows.append(row)
        del index
    return rows


def specs_for(scale: int, n: int, dim: int, ann) -> list[IndexSpec]:
    """What each scale builds on 2 shared cores.

    exact float32 up to 10x; at 100x exact search over float16 (IndexScalarQuantizer fp16) and IVF-PQ.
    HNSW with the shipped params (search.ann) at 1x and 10x, and a lighter build (M=16, efConstruction=40)
    at 1x, 2x and 10x: the points of the build-time fit (`hnsw_extrapolation`) for 100x. Not built at 100x on
    a 24-GiB machine: tried twice on 2026-12-01 with the shipped params, both killed for memory. Added chunk
    by chunk, its flat storage grows by doubling and the last doubling copies ~8 GiB into a buffer twice
    that size (killed 20 minutes in); added in one call (~18 GiB during the build) it ran 55 CPU-minutes,
    past the fit's 40, and was killed at the end of the build.
    IVF-PQ (8 dimensions per sub-quantizer, 8 bits: 48 bytes a 384-d vector) at two nprobes up to 10x, and
    at nprobe 16 at 100x (the one index measured here whose memory stays small there)."""
    nlist = ivf_lists(n)
    shipped_hnsw = IndexSpec("hnsw", {"M": ann.hnsw_m, "efC": ann.ef_construction, "efS": ann.ef_search})
    if scale >= 100:
        return [IndexSpec("exact-fp16", {}), IndexSpec("ivfpq", {"nlist": nlist, "m": dim // 8, "nprobe": 16})]
    specs = [IndexSpec("exact", {})]
    if scale in (1, 10):
        specs.append(shipped_hnsw)
    specs.append(IndexSpec("hnsw", {"M": 16, "efC": 40, "efS": ann.ef_search}))
    for nprobe in (16, 64):
        specs.append(IndexSpec("ivfpq", {"nlist": nlist, "m": dim // 8, "nprobe": nprobe}))
    return specs


def hnsw_extrapolation(rows: list[dict[str, Any]], base_n: int) -> dict[str, Any] | None:
    """HNSW at the scales of 10x and 100x not measured, from the measured builds: build_s = a * n * ln(n), a
    from the light build (M=16, efC=40) at the largest measured scale (the smallest one shows how well the
    form fits), times the shipped/light build-time ratio at the largest scale both were built at for the
    shipped params; memory = bytes per vector at the largest measured build times n."""
    light = {r["scale"]: r for r in rows if r["kind"] == "hnsw" and "M=16" in r["index"]}
    shipped = {r["scale"]: r for r in rows if r["kind"] == "hnsw" and "M=16" not in r["index"]}
    if len(light) < 2:
        return None
    lo, hi = light[min(light)], light[max(light)]
    nlogn = lambda n: n * np.log(n)  # noqa: E731
    a = hi["build_cpu_s"] / nlogn(hi["n"])
    both = max(set(shipped) & set(light), default=None)
    ratio = shipped[both]["build_cpu_s"] / light[both]["build_cpu_s"] if both else None
    per_vec = hi["memory_mib"] * MIB / hi["n"]
    shipped_per_vec = shipped[max(shipped)]["memory_mib"] * MIB / shipped[max(shipped)]["n"] if shipped else None
    scales = [s for s in (10, 100) if s > max(light)]
    if not scales:
        return None
    out: dict[str, Any] = {
        "model": f"build CPU s = a * n * ln(n), a fitted on the M=16/efC=40 build at {hi['scale']}x",
        "fit_check_scale": lo["scale"],
        "fit_check_predicted_s": round(a * nlogn(lo["n"]), 1),
        "fit_check_measured_s": lo["build_cpu_s"],
        "ratio_scale": both,
        "shipped_over_light_build_ratio": round(ratio, 2) if ratio else None,
        "scales": scales,
    }
    for scale in scales:
        n = base_n * scale
        light_s = a * nlogn(n)
        out[f"light_{scale}x_build_h"] = round(light_s / 3600, 2)
        out[f"shipped_{scale}x_build_h"] = round(light_s * ratio / 3600, 2) if ratio else None
        out[f"light_{scale}x_memory_gib"] = round(per_vec * n / GIB, 2)
        out[f"shipped_{scale}x_memory_gib"] = round(shipped_per_vec * n / GIB, 2) if shipped_per_vec else None
    return out


# --- inputs from the real data -----------------------------------------------------------------------------
def homedepot_tables(params) -> dict:
    import pandas as pd

    from components.adapters import adapt_homedepot
    from pipelines.ingest import source_files

    return adapt_homedepot(pd.read_csv(source_files("search", params.data.search), encoding="latin-1"))


def valid_queries(params, tables: dict, n: int, seed: int = 0) -> list[str]:
    """Up to n real queries of the valid split (EVALUATION.md's buckets), a seeded sample."""
    from components import schema as s
    from components.splits import VALID, split_queries

    sp = params.split
    q = split_queries(
        tables[s.QUERIES], sp.search_buckets, tuple(sp.search_valid_buckets), tuple(sp.search_test_buckets)
    )
    texts = sorted(q.loc[q[s.SPLIT] == VALID, s.QUERY].astype(str).unique())
    rng = np.random.default_rng(seed)
    return [texts[i] for i in sorted(rng.choice(len(texts), size=min(n, len(texts)), replace=False))]


def load_encoder_cpu(name: str, threads: int):
    import torch

    from components.encoder import load_encoder

    torch.set_num_threads(threads)
    return load_encoder(name, torch.device("cpu"))


def catalog_embeddings(
    params, paths: Paths, titles: list[str], cache: Path, threads: int = 1
) -> tuple[np.ndarray, str]:
    """The real catalog's pretrained embeddings: embed_catalog's output when present (same catalog size),
    else the cached copy, else computed now (one full catalog pass) and cached."""
    from components.encoder import encode_texts

    shipped = paths.embeddings / "embeddings.npy"
    if shipped.exists():
        emb = np.load(shipped)
        if len(emb) == len(titles):
            return emb.astype(np.float32), str(shipped)
    cached = cache / "catalog_embeddings.npy"
    if cached.exists():
        emb = np.load(cached)
        if len(emb) == len(titles):
            return emb, str(cached)
    sp = params.search
    model, tok = load_encoder_cpu(sp.encoder, threads)
    t0 = time.perf_counter()
    emb = encode_texts(model, tok, titles, sp.training.encode_batch_size, sp.text_max_length)
    log.info("embedded %d titles in %.0f s", len(titles), time.perf_counter() - t0)
    cache.mkdir(parents=True, exist_ok=True)
    np.save(cached, emb)
    return emb, f"computed now ({time.perf_counter() - t0:.0f} s), cached at {cached}"


# --- embedding throughput -------------------------------------------------------------------------------------
def synthetic_titles(titles: list[str], n: int, seed: int = 0) -> list[str]:
    """n titles whose words are drawn from the real titles' word frequencies, with real titles' word counts."""
    rng = np.random.default_rng(seed)
    words, counts = np.unique(np.asarray(" ".join(titles).split()), return_counts=True)
    lengths = np.asarray([len(t.split()) for t in titles])
    p = counts / counts.sum()
    out = []
    for length in rng.choice(lengths, size=n):
        out.append(" ".join(rng.choice(words, size=max(1, int(length)), p=p)))
    return out


def embed_throughput(params, real: list[str], synthetic: list[str], threads: tuple[int, ...]) -> list[dict]:
    from components.encoder import encode_texts

    sp = params.search
    rows = []
    for t in threads:
        model, tok = load_encoder_cpu(sp.encoder, t)
        encode_texts(model, tok, real[:64], sp.training.encode_batch_size, sp.text_max_length)  # warm-up
        for name, texts in (("real titles", real), ("synthetic titles", synthetic)):
            c0, t0 = time.process_time(), time.perf_counter()
            encode_texts(model, tok, texts, sp.training.encode_batch_size, sp.text_max_length)
            secs, cpu = time.perf_counter() - t0, time.process_time() - c0
            rows.append(
                {
                    "titles": name,
                    "threads": t,
                    "n": len(texts),
                    "seconds": round(secs, 1),
                    "titles_per_s": round(len(texts) / secs, 1),
                    "cpu_seconds": round(cpu, 1),
                    "titles_per_cpu_s": round(len(texts) / cpu, 1),
                }
            )
            log.info("%s", rows[-1])
    return rows


# --- data steps -----------------------------------------------------------------------------------------------
def scale_events(raw, copies: int):
    """`copies` copies of the Online Retail rows, copy c's customers and invoices renamed (c > 0), so the log
    has copies x the customers and rows over the same products and dates."""
    import pandas as pd

    parts = [raw]
    for c in range(1, copies):
        part = raw.copy()
        part["CustomerID"] = raw["CustomerID"] + c * 1_000_000
        part["InvoiceNo"] = raw["InvoiceNo"].astype(str) + f"-{c}"
        parts.append(part)
    return pd.concat(parts, ignore_index=True)


STEP_SNIPPET = """
import sys, time, json
from pathlib import Path
from artifacts.paths import Paths
from pipelines.common import load_params
import importlib
step, root, events = sys.argv[1], sys.argv[2], sys.argv[3]
params = load_params(overrides={"data.recommend.path": events})
t0 = time.perf_counter()
importlib.import_module("pipelines." + step).run(params, Paths(root=Path(root)))
print("STEP_SECONDS", time.perf_counter() - t0)
hwm = [line.split()[1] for line in open("/proc/self/status") if line.startswith("VmHWM:")]
print("STEP_PEAK_RSS_KB", hwm[0] if hwm else "")
"""


def data_costs(params, scales: list[int], workdir: Path) -> tuple[list[dict[str, Any]], dict[int, Path]]:
    """ingest, validate, split at each event-log scale; returns rows and each scale's HATCHERY_HOME (the 1x one
    trains a bundle when there is none, the larger ones' splits are what `recommend_costs_at_scale` fits on)."""
    import pandas as pd

    from pipelines.ingest import source_files

    raw = pd.read_parquet(source_files("recommend", params.data.recommend))
    rows, roots = [], {}
    for scale in scales:
        events_dir = workdir / f"events_{scale}x"
        events_dir.mkdir(parents=True, exist_ok=True)
        scaled = scale_events(raw, scale)
        scaled.to_parquet(events_dir / "online_retail.parquet", index=False)
        root = workdir / f"home_{scale}x"
        root.mkdir(exist_ok=True)
        for step in ("ingest", "validate", "split"):
            rows.append({"scale": scale, "rows": len(scaled), **measure_step(step, root, events_dir)})
            log.info("%s", rows[-1])
        del scaled
        roots[scale] = root
    return rows, roots


def measure_step(step: str, root: Path, events_dir: Path, extra: list[str] | None = None) -> dict[str, Any]:
    """One pipeline step in a fresh process: its seconds, CPU time (wait4's rusage of that child) and peak RSS
    (the VmHWM the child reports of itself)."""
    env = {**os.environ, "HATCHERY_HOME": str(root), "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}"}
    env.setdefault("HATCHERY_ENV", "dev")
    t0 = time.perf_counter()
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(
            [sys.executable, "-c", STEP_SNIPPET, step, str(root), str(events_dir)],
            cwd=REPO_ROOT,
            env=env,
            stdout=out,
            stderr=err,
            text=True,
        )
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - t0
        out.seek(0), err.seek(0)
        stdout, stderr = out.read(), err.read()
    if proc.returncode != 0:
        raise RuntimeError(f"{step} failed (exit {proc.returncode}):\n{stderr[-3000:]}")
    secs = next((float(line.split()[1]) for line in stdout.splitlines() if line.startswith("STEP_SECONDS")), wall)
    # The child's own high-water mark: wait4's ru_maxrss is at least the size of this (forked) process.
    hwm = [line.split() for line in stdout.splitlines() if line.startswith("STEP_PEAK_RSS_KB")]
    peak_kb = float(hwm[-1][1]) if hwm and len(hwm[-1]) > 1 else usage.ru_maxrss
    return {
        "step": step,
        "seconds": round(secs, 1),
        "process_wall_s": round(wall, 1),
        "peak_rss_mib": round(peak_kb / 1024, 1),
        "cpu_s": round(usage.ru_utime + usage.ru_stime, 1),
    }


# --- recommendation scoring -------------------------------------------------------------------------------------
def load_served(bundle: Path):
    """The recommendation bundle every scoring row times, loaded once (torch on one thread, as served)."""
    import torch

    from artifacts.recommend_bundle import load_recommend_bundle

    torch.set_num_threads(1)
    return load_recommend_bundle(bundle)


def recommend_costs(params, served, bundle: Path, users: int, k: int = 20) -> dict[str, Any]:
    return {"bundle": str(bundle), **time_scoring(served, users, params.seed, k)}


def time_scoring(model, users: int, seed: int, k: int = 20) -> dict[str, Any]:
    """CPU and wall seconds per 1,000 known users, one request at a time (as served) and in batches."""
    rng = np.random.default_rng(seed)
    known = [str(u) for u in rng.choice(model.state.users, size=min(users, len(model.state.users)), replace=False)]
    model.recommend(known[0], k)  # warm-up: the cached sparse matrices
    c0, t0 = time.process_time(), time.perf_counter()
    for u in known:
        model.recommend(u, k)
    online, online_cpu = time.perf_counter() - t0, time.process_time() - c0
    c0, t0 = time.process_time(), time.perf_counter()
    model.rank_users(known, k)
    batch, batch_cpu = time.perf_counter() - t0, time.process_time() - c0
    per = 1000 / len(known)
    return {
        "users_timed": len(known),
        "known_users_in_model": len(model.state.users),
        "items": len(model.state.items),
        "online_s_per_1000_users": round(online * per, 2),
        "batch_s_per_1000_users": round(batch * per, 2),
        "online_cpu_s_per_1000_users": round(online_cpu * per, 2),
        "batch_cpu_s_per_1000_users": round(batch_cpu * per, 2),
        "k": k,
        "threads": 1,
    }


def recommend_costs_at_scale(params, served, root: Path, scale: int, users: int, k: int = 20) -> dict[str, Any]:
    """Scoring over a larger event log: `refit_model` on that log's split (under `root`, from the data section),
    timed, then `time_scoring`. The trees cost the same whatever log they learned from; candidate generation
    and features are what grow with the log (more users: TIFU-kNN's neighbour search, the per-user frames).
    served: the loaded bundle (`load_served`): its booster and item text vectors."""
    c0, t0 = time.process_time(), time.perf_counter()
    model = refit_model(params, served, root)
    fit_cpu, fit_wall = time.process_time() - c0, time.perf_counter() - t0
    return {
        "scale": scale,
        "refit_cpu_s": round(fit_cpu, 1),
        "refit_wall_s": round(fit_wall, 1),
        **time_scoring(model, users, params.seed, k),
    }


def refit_model(params, served, root: Path):
    """The served model's booster over generators and statistics refitted on the history before the test cutoff
    of the split under `root` (item text vectors taken from the served state). The user encoder is not
    fitted: it is neither a candidate source nor a feature (README), so rankings do not depend on it."""
    import pandas as pd
    import torch

    from components import schema as s
    from components.recommend_model import RecommendModel
    from pipelines.io import read_fold, read_table
    from pipelines.train_recommend import fit_state, fold_cutoffs

    paths = Paths(root=root)
    catalog = read_table(paths.validated / "recommend", s.CATALOG)
    position = pd.Index(served.state.items).get_indexer(catalog[s.PRODUCT_ID].astype(str))
    if (position < 0).any():
        raise ValueError(f"{int((position < 0).sum())} catalog items under {root} are not in the served model")
    history, _ = read_fold(paths, "test", window=False)
    cutoff = fold_cutoffs(paths)["test"]
    text = served.state.text[position]
    state = fit_state(history, catalog, text, cutoff, params, torch.device("cpu"), fit_encoder=False)
    return RecommendModel(state, served.booster)


def train_recommend_bundle(root: Path, events_dir: Path) -> tuple[Path, dict[str, Any]]:
    row = measure_step("train_recommend", root, events_dir)
    return Paths(root=root).bundle("recommend"), row


# --- tables ---------------------------------------------------------------------------------------------------
def table(headers: list[str], rows: list[list[Any]]) -> str:
    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.3f}".rstrip("0").rstrip(".") if abs(v) < 10 else f"{v:,.1f}" if abs(v) < 1000 else f"{v:,.0f}"
        if isinstance(v, int):
            return f"{v:,}"
        return str(v)

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(fmt(v) for v in r) + " |" for r in rows]
    return "\n".join(lines)


def print_tables(result: dict[str, Any]) -> str:
    """The Markdown tables. Times are CPU time first (what the work costs on a core of its own; this machine
    is shared, so wall time mostly measures the wait for a core), wall time beside it."""
    out = []
    if result.get("index"):
        rows = result["index"]
        base = {r["scale"]: r for r in rows if r["kind"] in ("exact", "exact-fp16")}
        out.append(
            "### Search index: top-100, one query at a time on one thread; CPU ms per query (wall ms); "
            "recall@100 vs exact float32 on valid-split probe queries\n"
        )
        out.append(
            table(
                [
                    "catalog",
                    "products",
                    "index",
                    "build CPU s (wall)",
                    "memory MiB",
                    "p50 ms (wall)",
                    "p99 ms (wall)",
                    "p50 vs exact",
                    "recall@100 (probes)",
                ],
                [
                    [
                        f"{r['scale']}x",
                        r["n"],
                        r["index"],
                        f"{r['build_cpu_s']:,.1f} ({r['build_s']:,.1f})",
                        r["memory_mib"],
                        f"{r['p50_ms']:.2f} ({r['wall_p50_ms']:.1f})",
                        f"{r['p99_ms']:.2f} ({r['wall_p99_ms']:.1f})",
                        round(r["p50_ms"] / base[r["scale"]]["p50_ms"], 3) if r["scale"] in base else "",
                        f"{r['recall_at_100']:.3f} ({r['probe_queries']})",
                    ]
                    for r in rows
                ],
            )
        )
        ex = result.get("hnsw_extrapolation")
        if ex:
            out.append(
                f"\nHNSW beyond the measured builds, extrapolated: {ex['model']} (it predicts "
                f"{ex['fit_check_predicted_s']} CPU s at {ex['fit_check_scale']}x, measured "
                f"{ex['fit_check_measured_s']}); the shipped params cost x{ex['shipped_over_light_build_ratio']} "
                f"the light build's CPU at {ex['ratio_scale']}x. Memory: measured bytes per vector times n. Both "
                "are floors: while building, an index also holds buffers the finished one does not (docs/scaling.md: "
                "a shipped-params build at 100x outgrew 24 GiB and its fitted time).\n"
            )
            out.append(
                table(
                    [
                        "catalog",
                        "M=16/efC=40 build, core-hours",
                        "memory GiB",
                        "M=32/efC=200 build, core-hours",
                        "memory GiB",
                    ],
                    [
                        [
                            f"{s}x",
                            ex[f"light_{s}x_build_h"],
                            ex[f"light_{s}x_memory_gib"],
                            ex[f"shipped_{s}x_build_h"],
                            ex[f"shipped_{s}x_memory_gib"],
                        ]
                        for s in ex["scales"]
                    ],
                )
            )
    if result.get("embed"):
        rows = result["embed"]
        n1 = result["catalog_products"]
        out.append(
            "\n### Catalog embedding: pretrained all-MiniLM-L6-v2 on CPU, batch "
            f"{result['embed_batch_size']}, {result['embed_max_length']} tokens. Titles per CPU-second is one "
            "core's throughput (a one-thread worker on a core of its own); re-embed times are per such worker\n"
        )
        out.append(
            table(
                [
                    "titles",
                    "torch threads",
                    "timed",
                    "titles/CPU-s",
                    "titles/s wall",
                    f"re-embed 1x ({n1:,}) min",
                    "10x h",
                    "100x h",
                ],
                [
                    [
                        r["titles"],
                        r["threads"],
                        r["n"],
                        r["titles_per_cpu_s"],
                        r["titles_per_s"],
                        round(n1 / r["titles_per_cpu_s"] / 60, 1),
                        round(10 * n1 / r["titles_per_cpu_s"] / 3600, 2),
                        round(100 * n1 / r["titles_per_cpu_s"] / 3600, 1),
                    ]
                    for r in rows
                ],
            )
        )
    if result.get("data"):
        rows = result["data"]
        base = {r["step"]: r for r in rows if r["scale"] == 1}
        out.append(
            "\n### Data steps (pandas + Great Expectations), each step a fresh process in a temporary HATCHERY_HOME;"
            " CPU s from the child's rusage, peak RSS its VmHWM\n"
        )

        def ratio(r: dict, key: str) -> Any:
            return round(r[key] / max(base[r["step"]][key], 1e-9), 2) if r["step"] in base else ""

        out.append(
            table(
                ["event log", "raw rows", "step", "CPU s", "wall s", "peak RSS MiB", "CPU vs 1x", "RSS vs 1x"],
                [
                    [
                        f"{r['scale']}x",
                        r["rows"],
                        r["step"],
                        r["cpu_s"],
                        r["seconds"],
                        r["peak_rss_mib"],
                        ratio(r, "cpu_s"),
                        ratio(r, "peak_rss_mib"),
                    ]
                    for r in rows
                ],
            )
        )
    if result.get("recommend"):
        r = result["recommend"]
        scaled = result.get("recommend_scaled") or []
        trained = "train_recommend" in result  # --train-recommend: no bundle was there, one was trained on 1x
        source = "a bundle `train_recommend` trained on the 1x log" if trained else "the registered bundle"
        out.append(
            f"\n### Recommendation scoring: {source} ({r['items']:,} items), k={r['k']}, one thread"
            + (
                "; larger logs: the generators refitted on that log's history before the test cutoff, re-ranked by "
                "the same booster (the refit's CPU s beside the log)\n"
                if scaled
                else "\n"
            )
        )
        rows = []
        for x in [{"scale": 1, **r}, *scaled]:
            log_label = f"{x['scale']}x" + (f" (refit {x['refit_cpu_s']:,.0f} CPU s)" if "refit_cpu_s" in x else "")
            for mode, key in (("one at a time (as served)", "online"), ("batches of 256 (rank_users)", "batch")):
                rows.append(
                    [
                        log_label,
                        x["known_users_in_model"],
                        mode,
                        x["users_timed"],
                        x[f"{key}_cpu_s_per_1000_users"],
                        x[f"{key}_s_per_1000_users"],
                    ]
                )
        out.append(
            table(
                ["event log", "known users", "mode", "users timed", "CPU s per 1,000 users", "wall s per 1,000 users"],
                rows,
            )
        )
    runs = result.get("machine", {})
    loads = [m.get("load_avg_start", [None])[0] for m in runs.get("runs", [runs]) if m]
    if any(v is not None for v in loads):
        out.append(
            f"\n(load average recorded for each run: {', '.join(f'{v:.1f}' for v in loads if v is not None)}"
            f" on {os.cpu_count()} cores)"
        )
    text = "\n".join(out)
    print(text)
    return text


# --- main -------------------------------------------------------------------------------------------------------
def toy_catalog(n: int = 3000, dim: int = 32, seed: int = 0) -> np.ndarray:
    """Clustered unit vectors (the smoke test's catalog; no model, no data files)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((max(1, n // 50), dim), dtype=np.float32)
    x = centres[rng.integers(0, len(centres), n)] + 0.3 * rng.standard_normal((n, dim), dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def run_index(
    base: np.ndarray, probes: np.ndarray, scales: list[int], ann, latency_queries: int, threads: int = 1
) -> dict:
    rows = []
    for scale in scales:
        cat = Catalog(base, scale)
        # At 100x a float32 ground truth pass costs as much as everything else: recall of the float16
        # exact search is measured on a few probes only.
        truth = min(len(probes), 20) if scale >= 100 else None
        specs = specs_for(scale, cat.n, cat.dim, ann)
        rows += index_costs(cat, specs, probes, latency_queries, scale, threads, truth)
    return {"index": rows, "hnsw_extrapolation": hnsw_extrapolation(rows, len(base))}


def merge_results(parts: list[dict[str, Any]], out: Path) -> dict[str, Any]:
    """Several runs (e.g. the index section and the others run side by side) as one result and one set of
    tables; index rows concatenated in scale order, the HNSW fit redone over all of them."""
    result: dict[str, Any] = {"machine": {"runs": [p.get("machine") for p in parts]}, "index": []}
    for part in parts:
        for key, value in part.items():
            if key == "index":
                result["index"] += value
            elif key not in ("machine", "tables", "hnsw_extrapolation"):
                result[key] = value
    result["index"].sort(key=lambda r: r["scale"])
    if result["index"] and result.get("catalog_products"):
        result["hnsw_extrapolation"] = hnsw_extrapolation(result["index"], result["catalog_products"])
    result["tables"] = print_tables(result)
    write_json(out, result)
    return result


def main(argv: list[str] | None = None) -> dict[str, Any]:
    from pipelines.common import configure_logging, load_params

    configure_logging()
    # Sleeping, not spinning, OpenMP workers: on a shared machine spinning threads cost more than they save.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default="index,embed,data,recommend", help="sections, comma-separated")
    ap.add_argument("--scales", default="1,2,10", help="catalog scales for the index section (100: ~5 GiB free)")
    ap.add_argument("--event-scales", default="1,10", help="event-log scales for the data section")
    ap.add_argument("--probes", type=int, default=100, help="valid queries for recall@100 and latency")
    ap.add_argument("--embed-titles", type=int, default=500, help="titles timed per throughput row")
    ap.add_argument("--users", type=int, default=1000, help="users timed for recommendation scoring")
    ap.add_argument("--threads", type=int, default=1, help="threads for index builds and the catalog pass")
    ap.add_argument("--toy", action="store_true", help="index section only, on a tiny random catalog")
    ap.add_argument("--train-recommend", action="store_true", help="train a bundle when there is none")
    ap.add_argument("--recommend-bundle", default=None, help="score this bundle folder (default: the repo's)")
    ap.add_argument("--from-json", nargs="+", default=None, help="merge earlier runs' JSON and print the tables")
    ap.add_argument("--out", default=None, help="JSON output (default reports/bench/cost_curves.json)")
    args = ap.parse_args(argv)
    params, paths = load_params(), Paths()
    out = Path(args.out) if args.out else paths.bench("cost_curves")
    if args.from_json:
        return merge_results([json.loads(Path(f).read_text()) for f in args.from_json], out)
    sections = set(args.only.split(","))
    scales = [int(s) for s in args.scales.split(",")]
    result: dict[str, Any] = {"machine": {"cpus": os.cpu_count(), "load_avg_start": os.getloadavg()}}
    started = time.perf_counter()
    if args.toy:
        base = toy_catalog()
        probes = toy_catalog(50, seed=1)
        result.update(run_index(base, probes, scales, params.search.ann, 50, args.threads))
    else:
        cache = paths.reports / "bench" / "cost_curves"
        tables = None
        if sections & {"index", "embed"}:
            from components import schema as s

            tables = homedepot_tables(params)
            titles = s.product_texts(tables[s.CATALOG], params.search.text_fields)
            result["catalog_products"] = len(titles)
        if "index" in sections:
            from components.encoder import encode_texts

            base, source = catalog_embeddings(params, paths, titles, cache, args.threads)
            model, tok = load_encoder_cpu(params.search.encoder, args.threads)
            queries = valid_queries(params, tables, args.probes, params.seed)
            probes = encode_texts(model, tok, queries, 256, params.search.query_max_length)
            del model
            result["embeddings_source"] = source
            result.update(run_index(base, probes, scales, params.search.ann, args.probes, args.threads))
            write_json(out, result)
        if "embed" in sections:
            rng = np.random.default_rng(params.seed)
            real = [titles[i] for i in rng.choice(len(titles), size=args.embed_titles, replace=False)]
            synth = synthetic_titles(titles, args.embed_titles, params.seed)
            result["embed"] = embed_throughput(params, real, synth, (1, 2))
            result["embed_batch_size"] = params.search.training.encode_batch_size
            result["embed_max_length"] = params.search.text_max_length
            write_json(out, result)
        if sections & {"data", "recommend"}:
            with tempfile.TemporaryDirectory(prefix="hatchery-cost-") as tmp:
                work = Path(tmp)
                roots: dict[int, Path] = {}
                if "data" in sections:
                    ev = [int(s) for s in args.event_scales.split(",")]
                    result["data"], roots = data_costs(params, ev, work)
                    write_json(out, result)
                if "recommend" in sections:
                    bundle = Path(args.recommend_bundle) if args.recommend_bundle else paths.bundle("recommend")
                    if not (bundle / "manifest.json").exists() and not args.train_recommend:
                        log.warning("no recommendation bundle at %s: scoring skipped (--train-recommend)", bundle)
                    elif not (bundle / "manifest.json").exists():
                        if 1 not in roots:
                            result["data_1x"], one = data_costs(params, [1], work)
                            roots.update(one)
                        bundle, result["train_recommend"] = train_recommend_bundle(roots[1], work / "events_1x")
                    if (bundle / "manifest.json").exists():
                        served = load_served(bundle)
                        result["recommend"] = recommend_costs(params, served, bundle, args.users)
                        # the larger logs of the data section, scored with the same ranker
                        result["recommend_scaled"] = [
                            recommend_costs_at_scale(params, served, root, scale, args.users)
                            for scale, root in sorted(roots.items())
                            if scale > 1
                        ]
                        write_json(out, result)
    result["total_s"] = round(time.perf_counter() - started, 1)
    result["machine"]["load_avg_end"] = os.getloadavg()
    result["tables"] = print_tables(result)
    write_json(out, result)
    print(
        f"\n(total {result['total_s']:.0f} s; load average at start {result['machine']['load_avg_start'][0]:.1f}, "
        f"at end {result['machine']['load_avg_end'][0]:.1f}; written to {out})"
    )
    return result


if __name__ == "__main__":
    main()
