"""The console's rollout actions: the state machine's own transitions, written the way the operator CLI writes them.

Each action acts on the *current* state under the store's lock (RolloutStore.transact), so it wins
over a running rollout driver exactly as `python -m pipelines.rollout pause|resume|promote|rollback`
does; the audit trail records `console:<operator>` and the reason. promote / rollback carry their
registry intent in the same state write, the registry moves (Registry.apply, idempotent), then the
intent is cleared with a `registry` audit line: RolloutStore.settle, the same call pipelines/rollout.py's
settle() makes. A crash in between leaves the intent for the next `reconcile`.
"""

from __future__ import annotations

import time

from artifacts.paths import Paths
from artifacts.registry import MODEL_NAMES, Registry
from artifacts.rollout_store import RolloutStore
from components import rollout as ro

ACTIONS = ("pause", "resume", "rollback", "promote")


def act(paths: Paths, domain: str, action: str, operator: str, reason: str) -> ro.RolloutState:
    """Apply `action` to the domain's rollout; ro.RolloutError when the state machine does not allow it."""
    if action not in ACTIONS:
        raise ro.RolloutError(f"unknown action {action!r}; expected one of {ACTIONS}")
    store, actor = RolloutStore(paths, domain), f"console:{operator}"
    why = f"{action} from the console: {reason}" if reason else f"{action} from the console"

    def change(cur: ro.RolloutState):
        now = time.time()
        if action == "pause":
            return ro.pause(cur, now, actor, why)
        if action == "resume":
            return ro.resume(cur, now, actor, why)
        if action == "promote":
            new, entry = ro.complete(cur, now, actor, why)
            return ro.intend(new, "promote", new.champion, cur.champion, None, why, actor, entry.when), entry
        new, entry = ro.roll_back(cur, now, actor, why)
        if cur.phase == "full":
            new = ro.intend(new, "restore", new.champion, cur.champion, None, why, actor, entry.when)
        else:
            new = ro.intend(new, "reject", cur.champion, None, cur.challenger, why, actor, entry.when)
        return new, entry

    state = store.transact(change)
    return _settle(paths, store, state, actor) if state.pending else state


def _settle(paths: Paths, store: RolloutStore, state: ro.RolloutState, actor: str) -> ro.RolloutState:
    return store.settle(state, Registry(MODEL_NAMES[state.domain], paths), actor)
