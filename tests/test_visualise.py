"""The figures (matplotlib): line plots, panels of them, the count confusion, and the project's figures drawn with
them (the report's curves are checked in test_cli_eval_infer_report.py). Each is a PNG with an SVG beside it."""
import importlib.util
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from attend_infer_repeat.errors import InputError
from attend_infer_repeat.experiments import downstream_figure
from attend_infer_repeat.visualise import (
    REPORT_DPI,
    REPORT_FIGSIZE,
    _number,
    confusion_figure,
    draw_confusion,
    line_figure,
    line_panels,
    line_plot,
    panels_figure,
)

ROOT = Path(__file__).resolve().parent.parent


def svg_text(path: Path) -> str:
    """All the text of an SVG file (which must parse as XML and be an <svg>), joined by spaces."""
    root = ET.parse(path).getroot()
    assert root.tag.endswith("svg")
    return " ".join(t.strip() for t in root.itertext() if t.strip())


def assert_png(path: Path, size: tuple[int, int] | None = None) -> None:
    with Image.open(path) as im:
        assert im.format == "PNG"
        if size is not None:
            assert im.size == size
        im.verify()


def tick_labels(axis) -> list[str]:
    """The labels of the major ticks matplotlib draws (inside the view only)."""
    lo, hi = sorted(axis.get_view_interval())
    return [t.get_text() for t, v in zip(axis.get_ticklabels(), axis.get_ticklocs()) if lo <= v <= hi]


SERIES = {"train accuracy": ([0, 1000, 2000, 3000], [0.2, 0.9, 0.97, 0.99]),
          "held-out accuracy": ([0, 3000], [0.1, 0.95])}


def test_line_plot_writes_a_png_and_an_svg_beside_it_with_labels_and_legend(tmp_path):
    path = line_plot(SERIES, tmp_path / "p.png", xlabel="optimiser steps", ylabel="count accuracy", title="Accuracy",
                     y_range=(0, 1), hlines=(0.95, 0.98), hline_label="95% and 98%", percent=True)
    assert path == tmp_path / "p.png"
    # the size the report is laid out for: the figure's inches at its dpi, exactly (no tight cropping)
    assert_png(path, (round(REPORT_FIGSIZE[0] * REPORT_DPI), round(REPORT_FIGSIZE[1] * REPORT_DPI)))
    text = svg_text(tmp_path / "p.svg")
    for label in ("train accuracy", "held-out accuracy", "95% and 98%", "optimiser steps", "count accuracy",
                  "Accuracy", "2,000", "100%"):
        assert label in text
    # the same figure twice: the same SVG bytes (no date, fixed ids), so committed figures change only with the data
    line_plot(SERIES, tmp_path / "q.png", xlabel="optimiser steps", ylabel="count accuracy", title="Accuracy",
              y_range=(0, 1), hlines=(0.95, 0.98), hline_label="95% and 98%", percent=True)
    assert (tmp_path / "q.svg").read_bytes() == (tmp_path / "p.svg").read_bytes()


def test_line_plot_refuses_no_points_unequal_lengths_and_a_name_that_is_not_png(tmp_path):
    with pytest.raises(InputError, match="at least one point"):
        line_plot({"a": ([], [])}, tmp_path / "q.png")
    with pytest.raises(InputError, match="at least one point"):
        line_plot({}, tmp_path / "q.png")
    with pytest.raises(InputError, match="3 x values for 2 y values"):
        line_plot({"a": ([0, 1, 2], [0, 1])}, tmp_path / "q.png")
    with pytest.raises(InputError, match="ending in .png"):
        line_plot(SERIES, tmp_path / "q.svg")
    assert not list(tmp_path.iterdir())


def test_line_figure_has_the_series_band_targets_axes_and_round_ticks():
    fig = line_figure(SERIES, xlabel="optimiser steps", ylabel="count accuracy", title="Accuracy", y_range=(0.0, 1.0),
                      hlines=(0.95,), hline_label="95%", percent=True,
                      bands={"train accuracy": ([0, 3000], [0.1, 0.9], [0.3, 1.0])})
    (ax,) = fig.axes
    assert (ax.get_xlabel(), ax.get_ylabel(), ax.get_title()) == ("optimiser steps", "count accuracy", "Accuracy")
    assert ax.get_ylim() == (0.0, 1.0)
    lines = {line.get_label(): line for line in ax.lines}
    for label, (xs, ys) in SERIES.items():
        assert list(lines[label].get_xdata()) == xs and list(lines[label].get_ydata()) == ys
    assert any(list(line.get_ydata()) == [0.95, 0.95] for line in ax.lines)  # the target
    assert len(ax.collections) == 1  # the band
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["train accuracy", "held-out accuracy", "95%"]
    fig.canvas.draw()
    # round values, whole numbers in full: 1,000 not 1e3 or an offset; accuracies as percentages
    assert {"0", "1,000", "2,000", "3,000"} <= set(tick_labels(ax.xaxis))
    assert tick_labels(ax.yaxis) == ["0%", "20%", "40%", "60%", "80%", "100%"]
    ax.set_ylim(0.97, 1.0)  # a close-up: the ticks' own decimals, no more
    fig.canvas.draw()
    assert tick_labels(ax.yaxis) == ["97%", "97.5%", "98%", "98.5%", "99%", "99.5%", "100%"]


def test_a_band_without_a_series_gets_its_own_legend_entry_and_one_point_a_marker():
    fig = line_figure({"one run": ([5], [0.5])}, bands={"seeds": ([0, 10], [0.2, 0.3], [0.6, 0.8])})
    (ax,) = fig.axes
    assert ax.lines[0].get_marker() == "o"
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["one run", "seeds"]


@pytest.mark.parametrize("value, text", [(2500.0, "2,500"), (0.0, "0"), (-1200.0, "-1,200"), (0.125, "0.125"),
                                         (1e6, "1,000,000"), (2.5, "2.5"), (-497.5, "-497.5"), (0.1 + 0.2, "0.3"),
                                         (1234.25, "1,234.25"), (2e-5, "2e-05")])
def test_axis_numbers_are_whole_numbers_in_full_and_others_with_their_decimals(value, text):
    assert _number(value) == text


def test_panels_side_by_side_with_a_log_axis_labelled_at_the_budgets(tmp_path):
    panel = dict(series={"latents": ([100, 1000, 10000], [0.5, 0.6, 0.7])}, xlog=True, xlabel="labelled scenes")
    fig = panels_figure([dict(panel, title="sum"), dict(panel, title="ascending")], title="Downstream")
    assert [ax.get_title() for ax in fig.axes] == ["sum", "ascending"]
    assert all(ax.get_xscale() == "log" for ax in fig.axes)
    fig.canvas.draw()
    assert tick_labels(fig.axes[0].xaxis) == ["100", "1,000", "10,000"]
    path = line_panels([panel, panel], tmp_path / "two.png", title="Downstream")
    assert_png(path)
    assert "Downstream" in svg_text(tmp_path / "two.svg")
    with pytest.raises(InputError, match="at least one panel"):
        panels_figure([])


def test_confusion_writes_png_and_svg_with_counts_shares_and_labels(tmp_path):
    m = [[480, 3, 0], [2, 950, 10], [0, 30, 105]]
    path = draw_confusion(m, tmp_path / "confusion.png")
    assert_png(path)
    text = svg_text(tmp_path / "confusion.svg")
    for s in ("true count", "count found by the model", "counted right", "miscounted", "950", "22.2%"):
        assert s in text
    (ax,) = confusion_figure(m).axes
    cells = [t.get_text() for t in ax.texts]
    assert len(cells) == 9 and cells[0] == "480\n99.4%" and cells[2] == "0" and cells[7] == "30\n22.2%"
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("count found by the model", "true count")
    for bad in ([[1, 2]], [], [[[1]]]):
        with pytest.raises(InputError, match="square and non-empty"):
            draw_confusion(bad, tmp_path / "bad.png")


def _downstream_result(seeds: int = 2) -> dict:
    """A downstream.json's figure-relevant part: per task, the runs per budget and seed and their summary."""
    budgets = (100, 1000)
    runs = [{"budget": b, "seed": s, "latents": 0.5 + 0.1 * i + 0.01 * s, "cnn": 0.4 + 0.05 * i - 0.01 * s}
            for i, b in enumerate(budgets) for s in range(seeds)]
    summary = [{"budget": b, **{f"{k}_{stat}": float(fn([r[k] for r in runs if r["budget"] == b]))
                                for k in ("latents", "cnn") for stat, fn in (("mean", np.mean), ("std", np.std))}}
               for b in budgets]
    task = {"n_classes": 19, "majority_class_acc": 0.34, "runs": runs, "summary": summary}
    return {"results": {"sum": task, "ascending": {**task, "n_classes": 2, "majority_class_acc": 0.55}}}


def test_downstream_figure_one_panel_per_task_with_seed_bands_and_the_majority_class(tmp_path):
    path = downstream_figure(_downstream_result(), tmp_path / "downstream.png")
    assert_png(path)
    text = svg_text(tmp_path / "downstream.svg")
    for s in ("AIR latents + MLP (2 seeds)", "CNN on pixels (2 seeds)", "majority class", "labelled scenes",
              "sum: sum of the digits (19 classes)", "ascending: left digit < right digit (2 classes)"):
        assert s in text


def _load_benchmark(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_time_to_accuracy_figure_shows_each_seed_and_their_median_with_a_band(tmp_path):
    plot = _load_benchmark("time_to_accuracy").plot
    runs = [{"seed": s, "curve_minutes_acc": [[0.5 + 0.1 * s, 0.4], [0.9 + 0.1 * s, 0.96], [2.0 + 0.1 * s, 0.99]]}
            for s in range(3)] + [{"seed": 3, "error": "it failed"}]
    plot({"runs": runs, "cpus": 2, "command": "air train --compile off"}, tmp_path / "t.png")
    assert_png(tmp_path / "t.png")
    text = svg_text(tmp_path / "t.svg")
    for s in ("seed 0", "seed 2", "median of 3 seeds, band: worst to best", "95% and 98%", "2-core CPU",
              "air train --compile off"):
        assert s in text
    assert "seed 3" not in text  # a seed that failed has no curve
    plot({"runs": runs[:1]}, tmp_path / "one.png")  # one seed: its line, no median or band
    assert "seed 0" in svg_text(tmp_path / "one.svg") and "median" not in svg_text(tmp_path / "one.svg")
