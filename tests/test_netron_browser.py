"""Netron in a real browser: headless Debian Chromium (driven by Playwright) opens the page that
``bevnb.netron_view.show_in_netron`` serves for the int8 ``camera.backbone.onnx`` and must draw the whole graph.

Needs ``chromium`` on the PATH (``.ci/run`` installs Debian's) and the ``browser`` extra (Playwright); the
screenshot goes to ``build/netron/`` (``docs/netron_backbone_int8.png``, shown in chapter 05, is a copy of it).
"""

from __future__ import annotations

import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from bevnb import graphs
from bevnb.netron_view import show_in_netron, stop_netron
from bevnb.paths import build_dir
from bevnb.subclass import BACKBONE_FILE

CHROMIUM = shutil.which("chromium")
CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
)  # fmt: skip

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium on the PATH (apt install chromium)"),
]


@dataclass(frozen=True)
class NetronRender:
    """What headless Chromium showed: ``seconds`` from opening the page to the graph drawn, the page's HTML,
    the number of drawn nodes and the screenshot's path."""

    seconds: float
    html: str = field(repr=False)  # the whole page: too long to print
    nodes: int = 0
    screenshot: Path = Path()


def render_in_chromium(
    path: Path,
    screenshot: Path,
    focus: str | None = None,
    timeout_s: float = 120.0,
    size: tuple[int, int] = (1400, 1000),
) -> NetronRender:
    """Open ``path`` in Netron in headless Chromium, accept the consent dialog, wait until the last graph output is
    drawn, and save a PNG screenshot; ``focus`` (a node or tensor name shown on the page) scrolls the view to it
    first. ``seconds``: from opening the URL to the graph drawn (consent included).

    Netron replaces ``window.eval``, so everything here goes through locators and ``page.content()``, never
    ``page.evaluate``.
    """
    from playwright.sync_api import sync_playwright

    last_output = graphs.load(path).graph.output[-1].name
    url = show_in_netron(path)  # outside Jupyter: the URL
    screenshot.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="bevnb-chromium-") as profile, sync_playwright() as p:
        browser = p.chromium.launch_persistent_context(
            profile, executable_path=CHROMIUM, args=list(CHROMIUM_FLAGS), headless=True,
            viewport={"width": size[0], "height": size[1]},
        )  # fmt: skip
        try:
            page = browser.pages[0] if browser.pages else browser.new_page()
            start = time.perf_counter()
            page.goto(url)
            accept = page.get_by_role("button", name="Accept")
            expired = page.get_by_text("Please update to the newest version")
            drawn = page.locator("body.default text").filter(has_text=last_output)
            while not drawn.count():
                if accept.count() and accept.first.is_visible():
                    accept.first.click()
                if expired.count() and expired.first.is_visible():
                    raise RuntimeError("Netron refuses to render: this netron build is over 180 days old; upgrade it")
                if time.perf_counter() - start > timeout_s:
                    raise TimeoutError(f"Netron did not draw {last_output!r} within {timeout_s:.0f} s")
                page.wait_for_timeout(50)
            seconds = time.perf_counter() - start
            if focus is not None:
                page.locator("text").filter(has_text=focus).first.scroll_into_view_if_needed()
            page.screenshot(path=str(screenshot))
            html = page.content()
            nodes = page.locator("g.node").count()
        finally:
            browser.close()
    return NetronRender(seconds, html, nodes, screenshot)


def test_netron_draws_every_node_of_the_int8_backbone(onnx_dirs):
    path = onnx_dirs("int8") / BACKBONE_FILE
    model = graphs.load(path)
    screenshot = build_dir("netron") / "camera.backbone.int8.png"
    try:
        render = render_in_chromium(path, screenshot, focus="camera_depth_weights")
    finally:
        stop_netron()
    for text in ("Conv", "QuantizeLinear", "DequantizeLinear", "Softmax", "camera_feature", "camera_depth_weights"):
        assert f">{text}<" in render.html, text
    inputs_outputs = len(graphs.summarize(model).inputs) + len(model.graph.output)
    assert render.nodes == len(model.graph.node) + inputs_outputs  # Netron draws graph inputs/outputs as nodes too
    assert render.seconds < 120
    png = screenshot.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000  # a drawn page, not a blank one
