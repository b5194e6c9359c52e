"""The service's Prometheus collectors: request counts and latency per model version and rollout arm.

Served at /metrics next to BentoML's own; prometheus_client is imported when a Metrics is made, not
at module import, because BentoML sets PROMETHEUS_MULTIPROC_DIR in the worker first.
"""

from __future__ import annotations


class Metrics:
    """Request counts and latency per endpoint, model version and rollout arm (prometheus_client)."""

    def __init__(self) -> None:
        # Imported here, not at module import: BentoML sets PROMETHEUS_MULTIPROC_DIR in the worker first.
        import prometheus_client as pc

        self.requests = _get_or_create(
            pc.Counter, "hatchery_requests", "Scored requests", ["endpoint", "model_version", "arm", "outcome"]
        )
        self.latency = _get_or_create(
            pc.Histogram,
            "hatchery_request_latency_seconds",
            "Model scoring time",
            ["endpoint", "model_version", "arm"],
            buckets=(0.002, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.2, 0.5, 1, 2, 5),
        )
        self.shadow = _get_or_create(
            pc.Counter, "hatchery_shadow", "Shadow scorings of the challenger", ["domain", "model_version", "outcome"]
        )

    def observe(self, endpoint: str, version: str, arm: str, ms: float, error: str | None) -> None:
        self.requests.labels(endpoint, version, arm, "error" if error else "ok").inc()
        self.latency.labels(endpoint, version, arm).observe(ms / 1000.0)


def _get_or_create(kind, name: str, doc: str, labels: list[str], **kw):
    """A collector by name: a second service instance in one process (tests) reuses the first's."""
    import prometheus_client as pc

    try:
        return kind(name, doc, labels, **kw)
    except ValueError:  # already registered in this process
        for key in (name, f"{name}_total"):
            existing = pc.REGISTRY._names_to_collectors.get(key)
            if existing is not None:
                return existing
        raise
