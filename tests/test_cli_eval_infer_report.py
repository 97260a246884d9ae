"""``air eval``, ``air infer`` and ``air report`` end to end on a tiny model, including broken inputs."""
import base64
import json
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from attend_infer_repeat.checkpoint import save_checkpoint
from attend_infer_repeat.cli import main
from attend_infer_repeat.config import RunConfig, TrainConfig
from attend_infer_repeat.images import prepare
from attend_infer_repeat.model import AIR
from attend_infer_repeat.report import render_report
from attend_infer_repeat.scenes import SceneConfig, Scenes

from conftest import blob_images


@pytest.fixture
def run_dir(tmp_path, tiny_config):
    """A run directory as 'air train' leaves it: config, metrics, checkpoints (tiny untrained model)."""
    torch.manual_seed(0)
    model = AIR(tiny_config)
    run = tmp_path / "run"
    cfg = RunConfig(model=tiny_config, train=TrainConfig(digit_size=5))
    state = {"config": cfg.to_dict(), "model": model.state_dict(), "step": 20}
    save_checkpoint(run / "last.pt", state)
    save_checkpoint(run / "best.pt", state)
    (run / "config.json").write_text(json.dumps(cfg.to_dict()))
    lines = [{"kind": "train", "step": s, "train_seconds": s / 10, "elbo": -500 + s, "count_acc": s / 40}
             for s in (0, 10, 20)]
    lines += [{"kind": "eval", "step": 20, "train_seconds": 2.0, "elbo": -480.0, "count_acc": 0.4, "n": 16},
              {"kind": "final", "step": 20, "train_seconds": 2.0, "elbo": -481.0, "count_acc": 0.41, "n": 16}]
    (run / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in lines) + "\n")
    return run


@pytest.fixture
def scene_file(tmp_path):
    """A scene .npz like 'air data' writes, with blob 'digits' and their boxes."""
    x, counts = blob_images(16)
    images = (x[:, 0].numpy() * 255).astype(np.uint8)
    boxes = -np.ones((16, 2, 4), np.float32)
    for i in range(16):
        ys, xs = np.nonzero(images[i])
        for k, half in enumerate((ys < 10, ys >= 10)):
            if half.any():
                boxes[i, k] = [xs[half].min(), ys[half].min(), xs[half].max() + 1, ys[half].max() + 1]
    scenes = Scenes(images=images, counts=counts.numpy().astype(np.int64), boxes=boxes, ink_boxes=boxes.copy(),
                    labels=np.zeros((16, 2), np.int64), config=SceneConfig(canvas_size=20, digit_size=5),
                    split="test")
    return scenes.save(tmp_path / "scenes.npz")


def test_eval_cli(run_dir, scene_file, tmp_path, capsys):
    out = tmp_path / "e.json"
    assert main(["eval", str(run_dir), "--data", str(scene_file), "--iw-samples", "3", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "count accuracy" in text and "mean IoU" in text and "IW log p(x), K=3" in text
    r = json.loads(out.read_text())
    assert r["n"] == 16 and len(r["confusion"]) == 4 and "precision" in r["localisation"]
    assert r["train_step"] == 20


def test_eval_cli_unlabelled_folder(run_dir, tmp_path, capsys):
    folder = tmp_path / "imgs"
    folder.mkdir()
    Image.fromarray(np.zeros((20, 20), np.uint8)).save(folder / "a.png")
    assert main(["eval", str(run_dir / "last.pt"), "--data", str(folder), "--iw-samples", "0"]) == 0
    assert "found counts" in capsys.readouterr().out


def _inputs(tmp):
    """Files of every supported kind."""
    g = np.zeros((20, 20), np.uint8)
    g[4:9, 4:9] = 255
    Image.fromarray(g).save(tmp / "grey.png")
    Image.fromarray(np.stack([g] * 3, -1)).save(tmp / "rgb.png")
    Image.fromarray(np.stack([g] * 3, -1)).save(tmp / "photo.jpg")
    Image.fromarray(255 - np.kron(g, np.ones((3, 2), np.uint8))).save(tmp / "big_dark_on_light.png")  # 60x40
    np.save(tmp / "batch.npy", np.stack([g, g]).astype(np.float32) / 255)
    np.savez(tmp / "arrays.npz", images=np.stack([g, g, g]))
    return tmp


def test_infer_many_kinds(run_dir, tmp_path, capsys):
    (tmp_path / "in").mkdir()
    src = _inputs(tmp_path / "in")
    out = tmp_path / "out"
    assert main(["infer", str(run_dir), str(src / "grey.png"), str(src / "rgb.png"), str(src / "photo.jpg"),
                 str(src / "big_dark_on_light.png"), str(src / "batch.npy"), str(src / "arrays.npz"),
                 "--out", str(out)]) == 0
    r = json.loads((out / "results.json").read_text())
    assert len(r["images"]) == 9
    big = r["images"][3]
    assert (big["width"], big["height"]) == (40, 60) and big["inverted"] is True
    for rec in r["images"]:
        with Image.open(rec["overlay"]) as im:
            im.verify()
        for obj in rec["objects"]:
            assert len(obj["box"]) == 4 and len(obj["z_what"]) == 4 and 0 <= obj["presence_prob"] <= 1
            assert len(obj["object_box"]) == 4  # what the object draws, in the same (original) pixels
    # a folder: the same files, sorted
    assert main(["infer", str(run_dir), str(src), "--out", str(tmp_path / "out2"), "--no-overlays"]) == 0
    assert len(json.loads((tmp_path / "out2" / "results.json").read_text())["images"]) == 9
    capsys.readouterr()


def test_boxes_map_back_to_the_original_pixels():
    a = np.zeros((40, 80))  # wide: padded top and bottom by 20, then halved to 40
    p = prepare(a, 40)
    assert p.image.shape == (40, 40) and p.scale == 0.5 and (p.pad_x, p.pad_y) == (0, 20)
    assert p.to_original([[0, 10, 40, 30]]).tolist() == [[0, 0, 80, 40]]


@pytest.mark.parametrize("name,make,message", [
    ("truncated.png", lambda p: p.write_bytes(_png_bytes()[:60]), "not a readable image"),
    ("text.png", lambda p: p.write_text("hello, I am not a picture"), "not a readable image"),
    ("empty.png", lambda p: p.write_bytes(b""), "empty"),
    ("nan.npy", lambda p: np.save(p, np.full((2, 20, 20), np.nan)), "NaN"),
    ("rank5.npy", lambda p: np.save(p, np.zeros((1, 1, 1, 20, 20))), "shape"),
    ("emptydir", lambda p: p.mkdir(), "no image files"),
    ("missing.png", lambda p: None, "no such file"),
])
def test_infer_broken_inputs_exit_2_naming_the_file(run_dir, tmp_path, capsys, name, make, message):
    path = tmp_path / name
    make(path)
    assert main(["infer", str(run_dir), str(path), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert name in err and message in err and "Traceback" not in err


def _png_bytes() -> bytes:
    import io
    buf = io.BytesIO()
    Image.fromarray((np.random.default_rng(0).random((20, 20)) * 255).astype(np.uint8)).save(buf, "PNG")
    return buf.getvalue()


class _Collect(HTMLParser):
    def __init__(self):
        super().__init__()
        self.imgs, self.tags = [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        if tag == "img":
            self.imgs.append(dict(attrs)["src"])


def test_report_files_are_valid(run_dir, scene_file, capsys):
    assert main(["report", str(run_dir), "--data", str(scene_file), "--n", "16"]) == 0
    html_path = run_dir / "report" / "index.html"
    assert str(html_path) in capsys.readouterr().out
    parser = _Collect()
    parser.feed(html_path.read_text())
    assert parser.tags[0] == "html" and "h2" in parser.tags
    assert len(parser.imgs) >= 8 and all(s.startswith("data:image/png;base64,") for s in parser.imgs)
    for src in parser.imgs:  # every embedded image decodes
        import io
        with Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))) as im:
            im.verify()
    pngs = sorted((run_dir / "report").glob("*.png"))
    names = {p.name for p in pngs}
    assert {"reconstructions.png", "decomposition.png", "confusion.png", "worst.png", "prior_samples.png",
            "elbo_vs_steps.png", "accuracy_vs_time.png"} <= names
    for p in pngs:
        with Image.open(p) as im:
            im.verify()
    assert not any(p.name.startswith(".") for p in (run_dir / "report").iterdir())


def test_report_python_api_and_missing_run(run_dir, scene_file, tmp_path, capsys):
    scenes = Scenes.load(scene_file)
    assert render_report(run_dir, data=scenes, n_show=4).name == "index.html"
    assert main(["report", str(tmp_path / "nope")]) == 2
    assert "nope" in capsys.readouterr().err


@pytest.mark.skipif(shutil.which("chromium") is None,
                    reason="chromium is not installed (apt-get install -y chromium); the report is checked "
                    "in a real headless browser only where one is available")
def test_report_renders_in_headless_chromium(run_dir, scene_file, tmp_path):
    page = render_report(run_dir, data=Scenes.load(scene_file), n_show=4)
    shot = tmp_path / "shot.png"
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "screenshot_report.sh"
    subprocess.run(["bash", str(script), str(page), str(shot), "800x1200"], check=True, timeout=120,
                   capture_output=True)
    with Image.open(shot) as im:
        a = np.asarray(im.convert("L"))
    assert im.size == (800, 1200) and a.std() > 10  # something was drawn, not a blank page
