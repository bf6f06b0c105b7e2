"""Headless Debian Chromium driven by selenium, for the live-view tests and the serve soak bench.

`chromium_driver()` returns a WebDriver or raises `BrowserUnavailable` with the reason (no
chromium / chromedriver / selenium); tests turn that into a skip with the reason.
"""
from __future__ import annotations

import shutil
import tempfile

CHROMIUM_FLAGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage", "--window-size=1360,900"]


class BrowserUnavailable(RuntimeError):
    pass


def chromium_driver():
    try:
        from selenium import webdriver
    except ImportError as e:
        raise BrowserUnavailable("selenium is not installed (pip install 'edgedet[test]')") from e
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    chromedriver = shutil.which("chromedriver")
    if not chromium or not chromedriver:
        raise BrowserUnavailable("Debian's chromium and chromium-driver are not installed "
                                 "(scripts/test.sh installs them: apt-get install chromium chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in CHROMIUM_FLAGS + [f"--user-data-dir={tempfile.mkdtemp(prefix='edgedet-chromium-')}"]:
        options.add_argument(flag)
    try:  # explicit paths: selenium's own driver download is never attempted (no internet here)
        return webdriver.Chrome(service=webdriver.ChromeService(executable_path=chromedriver), options=options)
    except Exception as e:
        raise BrowserUnavailable(f"chromium did not start: {str(e).splitlines()[0]}") from e
