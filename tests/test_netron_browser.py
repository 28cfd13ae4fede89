"""Netron in a real browser: headless Debian Chromium (driven by Playwright) opens the page that
``bevnb.graphs.show_in_netron`` serves for the int8 ``camera.backbone.onnx`` and must draw the whole graph.

Needs /usr/bin/chromium (``.ci/run`` installs it); the screenshot goes to ``build/netron/``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bevnb import graphs
from bevnb.paths import build_dir
from bevnb.subclass import BACKBONE_FILE

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        not Path(graphs.CHROMIUM).is_file(),
        reason=f"needs Debian's chromium at {graphs.CHROMIUM} (apt install chromium)",
    ),
]


def test_netron_draws_every_node_of_the_int8_backbone(onnx_dirs):
    path = onnx_dirs("int8") / BACKBONE_FILE
    model = graphs.load(path)
    screenshot = build_dir("netron") / "camera.backbone.int8.png"
    try:
        render = graphs.render_in_chromium(path, screenshot, focus="camera_depth_weights")
    finally:
        graphs.stop_netron()
    for text in ("Conv", "QuantizeLinear", "DequantizeLinear", "Softmax", "camera_feature", "camera_depth_weights"):
        assert f">{text}<" in render.html, text
    inputs_outputs = len(graphs.summarize(model).inputs) + len(model.graph.output)
    assert render.nodes == len(model.graph.node) + inputs_outputs  # Netron draws graph inputs/outputs as nodes too
    assert render.seconds < 120
    png = screenshot.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000  # a drawn page, not a blank one
