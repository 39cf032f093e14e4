"""What the browser tests share: Debian's Chromium launched offline, the failure
report (one JSON line, then exit 1), and screenshots into SHOTS."""

import json
import os
import sys

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
SHOTS = os.environ["SHOTS"]

errors = []
shots = []


def launch(playwright):
    """Chromium without a sandbox (root) and without background networking (offline)."""
    os.makedirs(SHOTS, exist_ok=True)
    return playwright.chromium.launch(
        executable_path=CHROMIUM,
        args=["--no-sandbox", "--disable-gpu", "--disable-background-networking",
              "--disable-component-update", "--no-first-run", "--disable-sync", "--disable-quic"],
    )


def check(cond, what):
    if not cond:
        print(json.dumps({"failed": what, "console_errors": errors}), flush=True)
        sys.exit(1)


def shot(page, name):
    path = os.path.join(SHOTS, f"{name}.png")
    page.screenshot(path=path, full_page=True)
    shots.append(path)
