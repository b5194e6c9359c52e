"""The service's Prometheus collectors: requests and latency per model version and arm, and its health.

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
        # The answer never waits for, or fails on, the request log (a full disk): each lost line is counted.
        self.log_write_errors = _get_or_create(
            pc.Counter, "hatchery_log_write_errors", "Request log lines that could not be written", ["domain"]
        )
        # 1 while the domain's rollout state file does not parse and the registry's champion serves instead.
        # livemax: BentoML marks a stopped worker dead, and its last value leaves the export with it.
        self.state_corrupt = _get_or_create(
            pc.Gauge,
            "hatchery_state_corrupt",
            "1 while the rollout state file is unreadable (the registry's champion serves)",
            ["domain"],
            multiprocess_mode="livemax",
        )

    def observe(
        self, endpoint: str, version: str, arm: str, ms: float, error: str | None, client_error: bool = False
    ) -> None:
        """outcome: error (the model failed), client_error (an unknown id: the caller's mistake) or ok."""
        outcome = "error" if error else "client_error" if client_error else "ok"
        self.requests.labels(endpoint, version, arm, outcome).inc()
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
