"""Headless Chromium for the end-to-end tests: one path, one set of flags, one way to launch it."""

from __future__ import annotations

import contextlib
import shutil
from pathlib import Path
from typing import Iterator

import pytest

from tests.hardening.served_app import CHROMIUM_ARGS

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


@contextlib.contextmanager
def chromium() -> Iterator:
    """A launched headless Debian Chromium (Playwright), closed afterwards; fails when it is not installed."""
    if not Path(CHROMIUM).exists():
        pytest.fail("Debian's chromium is not installed; scripts/test installs it")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture(scope="module")
def browser():
    with chromium() as launched:
        yield launched
