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
        # Capture (services/capture.py): impressions and feedback events queued, dropped (queue full: the
        # answer never waits), written, or lost to a store error; and POST /feedback's verdict per event.
        self.capture = _get_or_create(
            pc.Counter,
            "hatchery_capture",
            "Impressions and feedback events by outcome: queued, dropped (queue full), written, write_error",
            ["kind", "outcome"],
        )
        self.feedback = _get_or_create(
            pc.Counter,
            "hatchery_feedback_events",
            "Feedback events received: accepted, rejected (reason), rate_limited or dropped (reason)",
            ["outcome", "reason"],
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

        # The drift monitor's latest reading per charter (pipelines/monitor.py writes reports/monitor/<charter>.json;
        # watch_drift re-reads a file when it changes). livemax: one worker publishes them.
        drift = {"multiprocess_mode": "livemax"}
        self.drift_value = _get_or_create(
            pc.Gauge, "hatchery_drift_value", "Latest drift check value", ["charter", "check"], **drift
        )
        self.drift_breached = _get_or_create(
            pc.Gauge,
            "hatchery_drift_breached",
            "1 when the drift check breached its threshold",
            ["charter", "check"],
            **drift,
        )
        self.drift_trigger = _get_or_create(
            pc.Gauge,
            "hatchery_drift_trigger",
            "1 when the monitor's last run asked for a new incubation",
            ["charter"],
            **drift,
        )
        self.drift_timestamp = _get_or_create(
            pc.Gauge, "hatchery_drift_report_timestamp_seconds", "End of the monitored window", ["charter"], **drift
        )
        self._drift_seen: dict[str, float] = {}

    def refresh_drift(self, folder) -> int:
        """Publish every changed monitor report in `folder` (reports/monitor/); returns how many were read.

        A report that does not parse is skipped (the monitor writes atomically, so it is a stray file)."""
        import json
        import math
        from pathlib import Path

        read = 0
        for path in sorted(Path(folder).glob("*.json")):
            if path.name == "state.json":
                continue
            try:
                mtime = path.stat().st_mtime
                if self._drift_seen.get(path.name) == mtime:
                    continue
                report = json.loads(path.read_text())
                charter = str(report["charter"])
                for c in report["checks"]:
                    value = c.get("value")
                    if value is not None and math.isfinite(value):
                        self.drift_value.labels(charter, c["name"]).set(value)
                    self.drift_breached.labels(charter, c["name"]).set(1 if c.get("breached") else 0)
                self.drift_trigger.labels(charter).set(1 if report["decision"]["trigger"] else 0)
                self.drift_timestamp.labels(charter).set(float(report["window"]["until"]))
            except (OSError, ValueError, KeyError, TypeError):
                continue
            self._drift_seen[path.name] = mtime
            read += 1
        return read

    def watch_drift(self, folder, interval_s: float = 30.0) -> None:
        """Refresh the drift gauges from `folder` now and every `interval_s` seconds (a daemon thread)."""
        import threading

        self.refresh_drift(folder)

        def loop() -> None:
            while not stop.wait(interval_s):
                self.refresh_drift(folder)

        stop = threading.Event()
        threading.Thread(target=loop, name="drift-gauges", daemon=True).start()

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
