"""The HTML report: self-contained (images as data URIs), and every image decodes in a real browser (headless Chromium)."""

import base64
import re
import shutil
import struct
import subprocess

import pytest

from prunekit.experiment import expand, run_experiments, write_report

SPEC = {
    "name": "html",
    "data": "digits",
    "model": {"name": "mlp", "kwargs": {"in_features": 64, "hidden": [16], "num_classes": 10}},
    "train": {"epochs": 1, "batch_size": 128, "optimizer": "adam", "lr": 0.01},
    "pruning": {"sparsity": 0.5},
    "rewind": "init",
    "protocols": {
        "oneshot": ["train", "prune", "train"],
        "imp": ["train", {"repeat": {"times": 2, "phases": ["prune", "rewind", "train"]}}],
    },
    "protocol": "oneshot",
    "sweep": {"protocol": ["oneshot", "imp"], "pruning.sparsity": [0.5, 0.8], "seed": [0, 1]},
}


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        root = tmp_path_factory.mktemp("html")
        run_experiments(expand(SPEC), root / "runs")
        md, html = write_report([root / "runs"], root / "report")
    finally:
        torch.set_num_threads(n)
    assert html is not None
    return md, html


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


def test_html_is_self_contained_with_one_figure_per_method(report):
    md, html = report
    text = html.read_text()
    srcs = re.findall(r'<img[^>]* src="([^"]+)"', text)
    assert len(srcs) == 2 + 2  # sparsity curve, training curves, per-layer bars for each of the 2 methods
    for src in srcs:
        assert src.startswith("data:image/png;base64,")
        w, h = png_size(base64.b64decode(src.split(",", 1)[1]))
        assert w > 300 and h > 100
    assert not re.search(r'(src|href)="(https?:|//|file:)', text)
    assert "<td>imp</td>" in text and "<td>oneshot</td>" in text and "± " in text
    assert "| imp | 0.8 |" in md.read_text()


@pytest.mark.skipif(shutil.which("chromium") is None, reason="needs Debian chromium (apt-get install -y chromium)")
def test_chromium_renders_every_image(report, tmp_path):
    _, html = report
    cmd = [
        shutil.which("chromium") or "chromium",
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--virtual-time-budget=5000",
        "--dump-dom",
        html.resolve().as_uri(),
    ]
    dom = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=True).stdout
    # the page's script writes how many images the browser decoded (naturalWidth > 0) into the title
    assert "<title>4/4 images rendered</title>" in dom
    assert 'data-images-rendered="4/4 images rendered"' in dom
