"""Driving Debian's Chromium with Playwright from trial tests (in a worker thread)."""

from __future__ import annotations

import os
import shutil

from twisted.internet import threads
from twisted.trial import unittest

CHROMIUM = os.environ.get("ARP_CHROMIUM", "/usr/bin/chromium")
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]


def available() -> str | None:
    """Why a browser test cannot run here, or None when it can."""
    if not shutil.which(CHROMIUM) and not os.path.exists(CHROMIUM):
        return f"{CHROMIUM} not installed (apt-get install chromium)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright not installed (pip install playwright)"
    return None


class BrowserTestCase(unittest.TestCase):
    """A trial test case skipped where :func:`available` says Chromium cannot run."""

    def setUp(self) -> None:
        why = available()
        if why:
            raise unittest.SkipTest(why)


def screenshot_dir() -> str:
    """Where screenshots go: ``screenshots/`` in trial's working directory (``_trial_temp``)."""
    path = os.path.abspath("screenshots")
    os.makedirs(path, exist_ok=True)
    return path


def in_browser(
    func, *args, viewport: dict | None = None, color_scheme: str = "light", extra_args: list[str] = ()
):
    """Run ``func(page, *args)`` in a fresh headless Chromium, in a thread; a Deferred of its result.

    ``extra_args`` go on Chromium's command line after the usual ones.
    """

    def run():
        from playwright.sync_api import sync_playwright

        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS + list(extra_args))
            try:
                context = browser.new_context(
                    viewport=viewport or {"width": 1280, "height": 800}, color_scheme=color_scheme
                )
                page = context.new_page()
                page.set_default_timeout(15000)
                return func(page, *args)
            finally:
                browser.close()

    return threads.deferToThread(run)
