"""Process settings of the service: thread limits, heap settling, request limits, poll intervals, backlogs.

Standard library only at import (torch and threadpoolctl are imported inside limit_threads).

Environment (all optional):
    HATCHERY_SERVING_THREADS   intra-op threads of one request (torch, OpenMP, BLAS); default 1
    HATCHERY_MAX_BODY_BYTES    largest accepted request body; default 16 KiB
    HATCHERY_MAX_JSON_DEPTH    deepest nesting of a request body; default 8 (the requests are flat objects)
    HATCHERY_LOG_MAX_MB        size at which the rollout request/feedback logs rotate; default 64
    HATCHERY_LOG_KEEP          rotated log files kept; default 3 (both read in artifacts/rollout_store.py,
                               since the rollout driver writes the feedback log with the same rules)
    HATCHERY_CAPTURE           `0` turns impression capture and POST /feedback off (503); default on
    HATCHERY_CAPTURE_QUEUE     impressions/feedback batches waiting for the writer; past it, dropped and
                               counted; default 10000
    HATCHERY_FEEDBACK_RATE     feedback events a second one unit may send, sustained; default 1
    HATCHERY_FEEDBACK_BURST    ... and at once; default 100 (a whole batch)
    (the feedback store's own settings are in artifacts/feedback_store.py)
"""

from __future__ import annotations

import gc
import os

# How often a request may stat the rollout state file for a change (seconds).
STATE_POLL_S = 0.25
# Shadow scoring runs off the response path on one thread; past this backlog it is skipped (and
# counted), so a slow challenger can never slow the champion's answers.
SHADOW_BACKLOG = 64
# Query-tower embeddings kept per loaded search model (distinct cleaned queries).
QUERY_CACHE_SIZE = 20_000
DEFAULT_MAX_BODY_BYTES = 16 * 1024
DEFAULT_MAX_JSON_DEPTH = 8
# POST /feedback: events in one batch (a 16 KiB body holds about 130 of them).
MAX_FEEDBACK_EVENTS = 100


def capture_enabled() -> bool:
    """HATCHERY_CAPTURE, else on: `0`, `false` or `off` turn impression capture and POST /feedback off."""
    return os.environ.get("HATCHERY_CAPTURE", "1").strip().lower() not in ("0", "false", "off", "no")


def capture_queue() -> int:
    """HATCHERY_CAPTURE_QUEUE, else 10000: items waiting for the capture writer before new ones are dropped."""
    return int(os.environ.get("HATCHERY_CAPTURE_QUEUE", "10000"))


def feedback_rate() -> tuple[float, float]:
    """(HATCHERY_FEEDBACK_RATE, HATCHERY_FEEDBACK_BURST), else (1, 100): one unit's feedback budget."""
    return float(os.environ.get("HATCHERY_FEEDBACK_RATE", "1")), float(os.environ.get("HATCHERY_FEEDBACK_BURST", "100"))


def max_body_bytes() -> int:
    """HATCHERY_MAX_BODY_BYTES, else 16 KiB: larger POST bodies are refused with 413."""
    return int(os.environ.get("HATCHERY_MAX_BODY_BYTES", DEFAULT_MAX_BODY_BYTES))


def max_json_depth() -> int:
    """HATCHERY_MAX_JSON_DEPTH, else 8: deeper request bodies are refused with 400 before they are parsed."""
    return int(os.environ.get("HATCHERY_MAX_JSON_DEPTH", DEFAULT_MAX_JSON_DEPTH))


def serving_threads() -> int:
    """HATCHERY_SERVING_THREADS, else 1: intra-op threads of one request (see limit_threads)."""
    return int(os.environ.get("HATCHERY_SERVING_THREADS", "1"))


def request_threads() -> int:
    """Requests served in parallel by one worker: one per core, at least 2.

    BentoML's default of 1 ran every request on one thread: 8 concurrent searches got the throughput of 1.
    """
    return max(2, os.cpu_count() or 1)


def settle_heap() -> None:
    """Collect, then move every live object out of the cyclic GC's reach (gc.freeze).

    A loaded search model holds ~0.5 M GC-tracked objects (catalog titles, per-product token sets);
    a full collection walks all of them and took 100-300 ms on these cores, a stall that lands on
    whichever request triggers it. Frozen objects are still freed by reference counting when a model
    is dropped; unfreezing first lets the collection reclaim cycles of the models a swap replaced.
    """
    gc.unfreeze()
    gc.collect()
    gc.freeze()


def limit_threads(threads: int) -> None:
    """Cap the intra-op threads of torch and every OpenMP/BLAS pool (LightGBM, FAISS) loaded so far.

    Measured on the 2 shared cores: the query tower took 32 ms a query with 1 thread and 334 ms with
    2, and LightGBM 1.3 ms vs 13 ms, because OpenMP workers spin for cores other jobs hold. Requests
    run in parallel on BentoML's thread pool instead, one core each.
    """
    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(threads)
    threadpool_limits(threads)
