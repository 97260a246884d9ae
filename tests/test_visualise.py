import pytest
from PIL import Image

from attend_infer_repeat.errors import InputError
from attend_infer_repeat.visualise import line_plot, nice_ticks


@pytest.mark.parametrize("lo, hi, expected", [
    (0.0, 6000.0, [0, 2000, 4000, 6000]),
    (0.3, 1.0, [0.4, 0.6, 0.8, 1.0]),
    (2.0, 4.0, [2.0, 2.5, 3.0, 3.5, 4.0]),
    (0.146, 3.99, [1, 2, 3]),
    (-1.0, 1.0, [-1.0, -0.5, 0.0, 0.5, 1.0]),
    (5.0, 5.0, [5.0]),
])
def test_axis_ticks_are_round_numbers_inside_the_range(lo, hi, expected):
    assert nice_ticks(lo, hi) == pytest.approx(expected)


def test_line_plot_writes_a_png_and_refuses_no_points(tmp_path):
    path = line_plot({"a": ([0, 1000, 2000], [0.2, 0.9, 0.99]), "b": ([0, 2000], [0.1, 0.5])}, tmp_path / "p.png",
                     xlabel="steps", ylabel="accuracy", title="t", hlines=(0.95,))
    with Image.open(path) as img:
        assert img.size == (720, 420)
    with pytest.raises(InputError, match="at least one point"):
        line_plot({"a": ([], [])}, tmp_path / "q.png")
