"""``tlwork serve``: the workbench in a web browser through textual-serve, checked with a real client.

Each test starts ``tlwork serve`` as a real subprocess on a free port, then talks to it the
way a browser does: it fetches the page over HTTP and opens the page's websocket, over which
textual-serve starts one app process and relays its terminal output; the set-up screen's text
must come back. A last test opens the page in headless Chromium (Debian's ``chromium``, driven
by Playwright) and checks the app is drawn on it, not textual-serve's splash or a blank page;
it skips where Chromium is not installed (.ci/run installs it).
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest
from tinydata import REPO_ROOT

pytest.importorskip("textual_serve", reason="the serve extra is not installed: pip install -e '.[test]'")
import aiohttp  # textual-serve's own HTTP library, after the skip above

ANSI = re.compile(r"\x1b\[[0-9;?<>=]*[ -/]*[@-~]|\x1b[()][0-9A-Za-z]|\x1b[=>]")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_serve(tmp_path: Path, *args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    return subprocess.Popen([sys.executable, "-m", "tui.cli", "serve", *args], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_listening(port: int, process: subprocess.Popen[str], limit: float = 60.0) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise AssertionError(f"tlwork serve did not listen on {port} within {limit:g} s")


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[int, subprocess.Popen[str]]]:
    port = free_port()
    process = start_serve(tmp_path, "--port", str(port))
    try:
        wait_listening(port, process)
        yield port, process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.communicate(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.communicate()


async def screen_text(port: int, wanted: tuple[str, ...], limit: float = 60.0) -> str:
    """What the app draws over the websocket, escape codes removed, once every ``wanted`` text is on it."""
    url = f"http://127.0.0.1:{port}/ws?width=100&height=30"
    received = ""
    async with aiohttp.ClientSession() as session, session.ws_connect(url) as websocket:
        async def read() -> str:
            nonlocal received
            async for message in websocket:
                data = message.data if isinstance(message.data, str) else bytes(message.data).decode("utf-8", "replace")
                received += data
                plain = ANSI.sub("", received)
                if all(text in plain for text in wanted):
                    return plain
            return ANSI.sub("", received)

        return await asyncio.wait_for(read(), limit)


async def test_the_page_is_served_and_its_websocket_runs_the_workbench(server: tuple[int, subprocess.Popen[str]]) -> None:
    port, _ = server
    async with aiohttp.ClientSession() as session, session.get(f"http://127.0.0.1:{port}/") as response:
        assert response.status == 200
        page = await response.text()
    assert f"ws://127.0.0.1:{port}/ws" in page  # the page connects back to this server's websocket
    plain = await screen_text(port, ("equivalent command", "tlwork run --mode linear-probe"))
    assert "F1 Set-up" in plain and "Start run" in plain


def test_a_non_local_host_warns_that_anyone_can_start_runs(tmp_path: Path) -> None:
    port = free_port()
    process = start_serve(tmp_path, "--host", "0.0.0.0", "--port", str(port))
    try:
        wait_listening(port, process)
    finally:
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=20)
    assert f"tlwork: warning: serving on 0.0.0.0:{port}: anyone who can reach this port can use the workbench and start runs" in stderr


def test_a_bad_or_busy_port_is_a_usage_error(tmp_path: Path) -> None:
    bad = subprocess.run([sys.executable, "-m", "tui.cli", "serve", "--port", "70000"], cwd=REPO_ROOT,
                         capture_output=True, text=True, timeout=60, check=False)
    assert bad.returncode == 2 and bad.stderr.strip() == "tlwork: error: --port must be between 1 and 65535 (got 70000); e.g. --port 8000"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        busy = start_serve(tmp_path, "--port", str(port))
        _, stderr = busy.communicate(timeout=60)
    assert busy.returncode == 2
    assert f"tlwork: error: cannot listen on 127.0.0.1:{port}" in stderr and "pick another --port" in stderr


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def text_bands(png: bytes, bands: int = 20) -> int:
    """How many of ``bands`` horizontal strips of a screenshot hold bright (text) pixels."""
    import io

    import numpy as np
    from PIL import Image

    grey = np.asarray(Image.open(io.BytesIO(png)).convert("L"))
    strips = np.array_split(grey, bands, axis=0)
    return sum(int((strip > 150).sum() > 50) for strip in strips)


@pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium is not installed (apt-get install chromium; .ci/run does)")
def test_headless_chromium_renders_the_workbench(server: tuple[int, subprocess.Popen[str]]) -> None:
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed: pip install -e '.[test]'")
    port, _ = server
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 700})
            page.goto(f"http://127.0.0.1:{port}/")
            splash = text_bands(page.screenshot())
            deadline, drawn = time.monotonic() + 90, 0
            while time.monotonic() < deadline and drawn < 10:
                page.wait_for_timeout(500)
                drawn = text_bands(page.screenshot())  # xterm.js draws on a canvas: read the pixels
        finally:
            browser.close()
    # The set-up screen's text runs from the top bar to the footer; the splash is one line in the middle.
    assert drawn >= 10, f"the page shows text in only {drawn} of 20 strips (the splash showed {splash})"
