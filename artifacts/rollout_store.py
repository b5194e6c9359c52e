"""The rollout store of one domain: state, audit trail, and the request / feedback / evaluation logs.

    <root>/reports/rollout/<domain>/
      state.json         the RolloutState the service routes by (replaced atomically)
      audit.jsonl        one line per state change: who or what, when, from, to, why (fsynced)
      requests.jsonl     the service: per scored request during a rollout, arm, version, latency, error, top ids
      feedback.jsonl     the replay simulator or production: per answer, the online success signal
      evaluations.jsonl  the rollout driver: per batch, the phase's numbers and decision

The rollout driver (pipelines/rollout.py) writes state and audit; the service (services/runtime.py)
reads the state and writes the request log.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from artifacts.files import append_jsonl, read_jsonl, write_json
from artifacts.paths import Paths
from components import rollout as ro

log = logging.getLogger(__name__)


class RolloutStore:
    def __init__(self, paths: Paths, domain: str) -> None:
        self.domain = domain
        self.folder = paths.rollout(domain)

    @property
    def state_path(self) -> Path:
        return self.folder / "state.json"

    @property
    def audit_path(self) -> Path:
        return self.folder / "audit.jsonl"

    @property
    def requests_path(self) -> Path:
        return self.folder / "requests.jsonl"

    @property
    def feedback_path(self) -> Path:
        return self.folder / "feedback.jsonl"

    @property
    def evaluations_path(self) -> Path:
        return self.folder / "evaluations.jsonl"

    # --- state ------------------------------------------------------------------------------------
    def read(self) -> ro.RolloutState | None:
        """The stored state, or None when no rollout ever ran for the domain."""
        if not self.state_path.exists():
            return None
        return ro.RolloutState.from_dict(json.loads(self.state_path.read_text()))

    def load(self) -> ro.RolloutState:
        """The stored state, or a fresh one."""
        return self.read() or ro.RolloutState(domain=self.domain)

    def mtime_ns(self) -> int | None:
        try:
            return self.state_path.stat().st_mtime_ns
        except FileNotFoundError:
            return None

    def save(self, state: ro.RolloutState, entry: ro.AuditEntry) -> ro.RolloutState:
        """Append the audit entry (fsynced), then replace the state file in one rename."""
        append_jsonl(self.audit_path, entry.to_dict(), durable=True)
        write_json(self.state_path, state.to_dict())
        log.info("%s: %s -> %s (%s)", state.domain, entry.from_phase, entry.to_phase, entry.reason)
        return state

    def audit(self) -> list[dict[str, Any]]:
        return read_jsonl(self.audit_path)

    # --- logs -------------------------------------------------------------------------------------
    def append_request(self, record: dict[str, Any]) -> None:
        append_jsonl(self.requests_path, record)

    def requests(self) -> list[dict[str, Any]]:
        return read_jsonl(self.requests_path)

    def append_feedback(self, record: dict[str, Any]) -> None:
        append_jsonl(self.feedback_path, record)

    def feedback(self) -> list[dict[str, Any]]:
        return read_jsonl(self.feedback_path)

    def append_evaluation(self, record: dict[str, Any]) -> None:
        append_jsonl(self.evaluations_path, record)

    def evaluations(self) -> list[dict[str, Any]]:
        return read_jsonl(self.evaluations_path)
