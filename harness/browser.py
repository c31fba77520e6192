"""Headless Chromium from Debian's `chromium` package, driven by Playwright (its own browser
download is not available here), for the catalog page's tests and the README's screenshots."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator

CHROMIUM_ENV = "MARKETPLACE_CHROMIUM"
# Without the background-networking flags Chromium keeps calling home, which this network refuses.
FLAGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def chromium_path() -> str | None:
    return (
        os.environ.get(CHROMIUM_ENV) or shutil.which("chromium") or shutil.which("chromium-browser")
    )


@contextlib.contextmanager
def browser_page(width: int = 1280, height: int = 900) -> Iterator:
    """A fresh page in a fresh headless Chromium (its own empty profile)."""
    from playwright.sync_api import sync_playwright

    path = chromium_path()
    if path is None:
        raise RuntimeError(
            f"no Chromium: install Debian's chromium package (or set {CHROMIUM_ENV})"
        )
    with (
        tempfile.TemporaryDirectory(prefix="marketplace-chromium-") as profile,
        sync_playwright() as playwright,
    ):
        context = playwright.chromium.launch_persistent_context(
            profile,
            executable_path=path,
            headless=True,
            args=FLAGS,
            viewport={"width": width, "height": height},
        )
        try:
            yield context.pages[0] if context.pages else context.new_page()
        finally:
            context.close()
