"""Helpers of the browser tests (imported explicitly): Chromium's flags, screenshots, an in-thread server.

Screenshots go to test-artifacts/screenshots/<name>.png (gitignored; CI keeps the folder as an
artifact); HATCHERY_DOCS_SCREENSHOTS=1 also copies each to docs/screenshots/, the README's pictures.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SCREENSHOTS = REPO / "test-artifacts" / "screenshots"
DOCS_SCREENSHOTS = REPO / "docs" / "screenshots"
# Debian's Chromium, headless, as root in a container, and quiet: no update checks, sync or other calls out.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def shot(page, name: str, full_page: bool = True) -> Path:
    """Save what the page shows as test-artifacts/screenshots/<name>.png (and docs/screenshots/ on request)."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=full_page)
    if os.environ.get("HATCHERY_DOCS_SCREENSHOTS") == "1":
        DOCS_SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, DOCS_SCREENSHOTS / path.name)
    return path


def serve_in_thread(app, port: int, timeout_s: float = 120.0):
    """Run an ASGI app with uvicorn on 127.0.0.1:port in a daemon thread (lifespan on); (server, thread)."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + timeout_s
    while not server.started:
        if not thread.is_alive() or time.time() > deadline:
            raise RuntimeError("the in-process server did not start")
        time.sleep(0.1)
    return server, thread
