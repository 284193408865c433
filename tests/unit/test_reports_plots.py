"""The figures and the HTML page, rendered from the recorded dump, show the data.

Checks read the PNG pixels back: each namespace's color is present, the requested-vs-used
panels have one dark bar per workload, the budget line is drawn; the page inlines valid PNGs.
"""

from __future__ import annotations

import base64
import re
from pathlib import Path

import numpy as np
import pytest
from matplotlib import colors as mcolors
from matplotlib import image as mimage
from numpy.typing import NDArray

from kopeck.cli import main
from kopeck.reports.plots import BUDGET_COLOR, IDLE_COLOR, PALETTE, USED_COLOR

DUMP = Path(__file__).with_name("reports_dump.json")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("plots")
    rc = main(["report", "--from-file", str(DUMP), "--period", "2026-11", "--plots",
               str(directory), "-o", "csv"])
    assert rc == 0
    return directory


def pixels(path: Path) -> NDArray[np.float32]:
    img: NDArray[np.float32] = np.asarray(mimage.imread(str(path)), dtype=np.float32)[..., :3]
    return img


def mask(img: NDArray[np.float32], color: str, tol: float = 0.02) -> NDArray[np.bool_]:
    rgb = np.array(mcolors.to_rgb(color), dtype=np.float32)
    result: NDArray[np.bool_] = np.all(np.abs(img - rgb) <= tol, axis=-1)
    return result


def runs(column: NDArray[np.bool_]) -> int:
    """Separate stretches of True in a column of pixels."""
    edges = np.diff(column.astype(np.int8))
    return int(np.sum(edges == 1) + (1 if column[0] else 0))


def test_every_figure_is_written_and_not_blank(out: Path) -> None:
    names = {p.name for p in out.iterdir()}
    assert names == {"spend_by_namespace.png", "budget_burn.png", "requested_vs_used.png",
                     "report.html"}
    for name in names - {"report.html"}:
        data = (out / name).read_bytes()
        assert data.startswith(PNG_MAGIC)
        img = pixels(out / name)
        assert img.shape[0] > 200 and img.shape[1] > 400
        not_white = np.any(img < 0.95, axis=-1).mean()
        assert 0.03 < not_white < 0.9, f"{name}: {not_white:.1%} of pixels drawn"


def test_spend_figure_has_a_color_per_namespace(out: Path) -> None:
    img = pixels(out / "spend_by_namespace.png")
    # namespaces sorted: batch, ci, search, shop take the palette in order; idle is grey
    for name, color in zip(["batch", "ci", "search", "shop"], PALETTE, strict=False):
        assert mask(img, color).sum() > 200, f"no bar area for namespace {name}"
    assert mask(img, IDLE_COLOR).sum() > 200, "no bar area for idle"
    # shop's segment is the largest in every monthly bar after search: its area is large
    assert mask(img, PALETTE[3]).sum() > mask(img, PALETTE[0]).sum() * 5


def test_requested_vs_used_has_one_used_bar_per_workload(out: Path) -> None:
    img = pixels(out / "requested_vs_used.png")
    used = mask(img, USED_COLOR)
    # the 2026-11 selection has four workloads in the monthly period (web, api, index,
    # nightly); a column through the bars' bases crosses every one of them
    best = max(runs(used[:, x]) for x in range(used.shape[1]))
    assert best == 4


def test_budget_figure_draws_the_budget_line(out: Path) -> None:
    img = pixels(out / "budget_burn.png")
    red = mask(img, BUDGET_COLOR, tol=0.05)
    widest_row = red.sum(axis=1).max()
    assert widest_row > img.shape[1] * 0.3, "a horizontal budget line across the panel"


def test_html_page_is_self_contained(out: Path) -> None:
    page = (out / "report.html").read_text()
    for ns in ("shop", "search", "batch", "__idle__"):
        assert f"<td>{ns}</td>" in page
    assert "2026-11" in page
    sources = re.findall(r'<img[^>]*src="([^"]+)"', page)
    assert len(sources) == 3
    for src, name in zip(sources, ["spend_by_namespace.png", "budget_burn.png",
                                   "requested_vs_used.png"], strict=True):
        assert src.startswith("data:image/png;base64,")
        raw = base64.b64decode(src.split(",", 1)[1], validate=True)
        assert raw.startswith(PNG_MAGIC)
        assert raw == (out / name).read_bytes()
    assert not re.search(r'(src|href)="(https?:)?//', page), "no external assets"
    assert "<script" not in page and "<link" not in page
