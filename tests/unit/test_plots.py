"""The evaluate and bench plots: real PNG files of the expected size with visible content."""

import numpy as np
import pytest

from mstage.errors import UsageError
from mstage.evaluation.bench import LevelResult
from mstage.evaluation.plots import check_png_path, plot_bench, plot_quality


def _distinct_colours(image: np.ndarray) -> int:
    rgb = (image[..., :3] * 255).round().astype(np.uint8).reshape(-1, 3)
    return len(np.unique(rgb, axis=0))


def test_quality_plot_is_a_png_with_lines(tmp_path):
    import matplotlib.image

    rows = {
        "popularity": {"recall@10": 0.05, "recall@20": 0.09, "recall@100": 0.3,
                       "ndcg@10": 0.1, "ndcg@20": 0.11, "ndcg@100": 0.2},
        "retrieval": {"recall@10": 0.1, "recall@20": 0.18, "recall@100": 0.5,
                      "ndcg@10": 0.17, "ndcg@20": 0.2, "ndcg@100": 0.3},
    }
    path = plot_quality(rows, [10, 20, 100], tmp_path / "sub" / "quality.png", "title")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    image = matplotlib.image.imread(path)
    assert image.shape[:2] == (400, 1000)  # 10 x 4 inches at 100 dpi
    assert _distinct_colours(image) > 20  # lines, markers, text: not a blank canvas


def test_bench_plot_is_a_png_with_histogram_and_curve(tmp_path):
    import matplotlib.image

    rng = np.random.default_rng(0)
    levels = [LevelResult(c, rng.lognormal(np.log(0.002 * c), 0.3, 200), 1.0, "requests")
              for c in (1, 4, 16)]
    path = plot_bench(levels, tmp_path / "bench.png")
    image = matplotlib.image.imread(path)
    assert image.shape[:2] == (400, 1100)
    assert _distinct_colours(image) > 20


@pytest.mark.parametrize("name", ["plot.jpg", "plot"])
def test_plot_path_must_be_png(tmp_path, name):
    with pytest.raises(UsageError, match=f"expected a .png file for the plot, found '{name}'"):
        check_png_path(tmp_path / name)


def test_plot_path_must_not_be_a_directory(tmp_path):
    (tmp_path / "x.png").mkdir()
    with pytest.raises(UsageError, match="found the directory"):
        check_png_path(tmp_path / "x.png")
