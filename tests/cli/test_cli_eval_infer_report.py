"""``air eval``, ``air infer`` and ``air report`` end to end on a tiny model, including broken inputs."""
import base64
import json
import xml.etree.ElementTree as ET
from html.parser import HTMLParser

import numpy as np
import pytest
import torch
from helpers import blob_images, browser_page, needs_browser
from PIL import Image

from attend_infer_repeat.checkpoint import save_checkpoint
from attend_infer_repeat.cli import main
from attend_infer_repeat.config import RunConfig, TrainConfig
from attend_infer_repeat.data import SceneConfig, Scenes
from attend_infer_repeat.data.images import prepare
from attend_infer_repeat.model import AIR
from attend_infer_repeat.report import render_report


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
    # the plots (matplotlib) also as SVG beside their PNG, with their axis labels and legends as text
    plots = ("elbo_vs_steps", "elbo_vs_time", "accuracy_vs_steps", "accuracy_vs_time", "confusion")
    assert {f"{name}.svg" for name in plots} == {p.name for p in (run_dir / "report").glob("*.svg")}
    svg = {name: (run_dir / "report" / f"{name}.svg").read_text() for name in plots}
    assert all(ET.fromstring(text).tag.endswith("svg") for text in svg.values())
    for label in ("train ELBO (batch)", "held-out ELBO", "optimiser steps", "ELBO per image (nats)"):
        assert label in svg["elbo_vs_steps"]
    for label in ("train count accuracy (batch)", "held-out count accuracy", "95% and 98%",
                  "training wall-clock seconds"):
        assert label in svg["accuracy_vs_time"]
    assert "true count" in svg["confusion"] and "miscounted" in svg["confusion"]
    # the plots are downscaled on the page: drawn smoothly, not with the scene pictures' pixelated rendering
    page = html_path.read_text()
    assert page.count("<img class='plot'") == 5 and "img.plot { image-rendering: auto; }" in page
    assert not any(p.name.startswith(".") for p in (run_dir / "report").iterdir())


def test_report_python_api_and_missing_run(run_dir, scene_file, tmp_path, capsys):
    scenes = Scenes.load(scene_file)
    assert render_report(run_dir, data=scenes, n_show=4).name == "index.html"
    assert main(["report", str(tmp_path / "nope")]) == 2
    assert "nope" in capsys.readouterr().err
    # a checkpoint names its run, as for air eval and air serve
    assert main(["report", str(run_dir / "last.pt"), "--n", "16"]) == 0
    assert (run_dir / "report" / "index.html").is_file()


# every <img> of the page: whether it loaded and decoded, and whether a reader can see it (laid out with a size, not
# display:none, visibility:hidden or transparent through any ancestor, inside the page, not covered by another
# element at its centre); each entry says what is wrong with one image (empty: nothing)
_IMAGE_PROBLEMS_JS = """async () => {
  const out = [];
  const page = document.documentElement;
  for (const [i, img] of Array.from(document.images).entries()) {
    const problems = [];
    let decoded = true;
    try { await img.decode(); } catch (e) { decoded = false; }
    if (!img.complete || !decoded || img.naturalWidth === 0 || img.naturalHeight === 0) problems.push("not loaded");
    img.scrollIntoView({block: "center", inline: "center"});
    const r = img.getBoundingClientRect();
    if (r.width < 8 || r.height < 8) problems.push(`laid out ${r.width}x${r.height} px`);
    const style = getComputedStyle(img);
    if (style.visibility !== "visible") problems.push(`visibility ${style.visibility}`);
    let opacity = 1;
    for (let e = img; e; e = e.parentElement) {
      const s = getComputedStyle(e);
      if (s.display === "none") problems.push(`display:none on <${e.tagName.toLowerCase()}>`);
      opacity *= parseFloat(s.opacity);
    }
    if (opacity < 0.5) problems.push(`opacity ${opacity}`);
    const x = r.left + window.scrollX, y = r.top + window.scrollY;
    if (x + r.width <= 0 || y + r.height <= 0 || x >= page.scrollWidth || y >= page.scrollHeight)
      problems.push("outside the page");
    else if (r.width >= 8 && r.height >= 8) {
      const hit = document.elementFromPoint(r.left + r.width / 2, r.top + r.height / 2);
      if (hit !== img) problems.push(`covered by <${hit ? hit.tagName.toLowerCase() : "nothing"}>`);
    }
    out.push({index: i, alt: img.alt, natural: [img.naturalWidth, img.naturalHeight],
              box: [r.width, r.height], problems});
  }
  return out;
}"""

# ways of hiding images that a screenshot-is-not-blank check lets through; the check above must catch each one
_HIDDEN = ["img { visibility: hidden !important; }", "img { display: none !important; }",
           "img { opacity: 0 !important; }", "figure { opacity: 0.01 !important; }",
           "img { width: 0 !important; height: 0 !important; border: 0 !important; }",
           "img { position: absolute !important; left: -10000px !important; }",
           "body::after { content: ''; position: fixed; inset: 0; background: white; }"]


@needs_browser
def test_report_renders_in_headless_chromium(run_dir, scene_file, tmp_path):
    """Every image of the report loads, decodes and is visible in a real browser: laid out with a size, not
    hidden by CSS or covered, and painted (its area of a screenshot is not blank)."""
    page_path = render_report(run_dir, data=Scenes.load(scene_file), n_show=4)
    parser = _Collect()
    parser.feed(page_path.read_text())
    with browser_page(1000, 900) as (page, errors):
        page.on("requestfailed", lambda r: errors.append(f"request failed: {r.url[:80]}"))
        page.goto(page_path.resolve().as_uri(), wait_until="load")
        images = page.evaluate(_IMAGE_PROBLEMS_JS)
        assert len(images) == len(parser.imgs) >= 8, "the browser does not see every <img> of the page"
        bad = [im for im in images if im["problems"]]
        assert not bad, f"{len(bad)} of {len(images)} images cannot be seen: {bad}"
        assert not errors, errors

        shot = tmp_path / "shot.png"
        page.screenshot(path=str(shot), full_page=True)
        boxes = page.evaluate("() => Array.from(document.images).map(img => { const r = "
                              "img.getBoundingClientRect(); return [r.left + scrollX, r.top + scrollY, "
                              "r.width, r.height]; })")
        with Image.open(shot) as im:
            a = np.asarray(im.convert("L"), np.float64)
        for k, (x, y, w, h) in enumerate(boxes):  # inside the 1-px border: the picture itself
            crop = a[int(y) + 2:int(y + h) - 2, int(x) + 2:int(x + w) - 2]
            assert crop.size and crop.std() > 2, f"image {k} ({images[k]['alt']}) is blank on the screen"

        for css in _HIDDEN:  # the check sees through each way of hiding them (else it proves nothing)
            handle = page.add_style_tag(content=css)
            hidden = page.evaluate(_IMAGE_PROBLEMS_JS)
            assert all(im["problems"] for im in hidden), f"{css!r} hides images the check calls visible"
            handle.evaluate("e => e.remove()")
        assert not any(im["problems"] for im in page.evaluate(_IMAGE_PROBLEMS_JS))


def test_eval_and_infer_with_refined_counts(run_dir, scene_file, tmp_path, capsys):
    """--refine-steps, --refine-samples: the counts and boxes of AIR.infer(refine_steps=K, refine_samples=S), in
    eval's JSON and infer's results."""
    scenes = Scenes.load(scene_file)
    want = AIR.load(run_dir / "best.pt").infer(scenes.images, refine_steps=3, refine_samples=8)
    out = tmp_path / "e.json"
    assert main(["eval", str(run_dir), "--data", str(scene_file), "--iw-samples", "0", "--refine-steps", "3",
                 "--refine-samples", "8", "--json", str(out)]) == 0
    r = json.loads(out.read_text())
    assert (r["refine_steps"], r["refine_samples"]) == (3, 8)
    assert r["predicted_count_histogram"] == np.bincount(want.counts.numpy(), minlength=4).tolist()
    np.save(tmp_path / "scenes.npy", scenes.images)
    assert main(["infer", str(run_dir), str(tmp_path / "scenes.npy"), "--refine-steps", "3", "--refine-samples",
                 "8", "--no-overlays", "--out", str(tmp_path / "o")]) == 0
    got = json.loads((tmp_path / "o" / "results.json").read_text())["images"]
    assert [len(g["objects"]) for g in got] == want.counts.tolist()
    capsys.readouterr()


@pytest.mark.parametrize("command", ["eval", "infer"])
@pytest.mark.parametrize("option", ["--refine-steps", "--refine-samples"])
def test_refine_options_must_be_whole_numbers(run_dir, scene_file, command, option, capsys):
    with pytest.raises(SystemExit):
        main([command, str(run_dir), str(scene_file) if command == "infer" else "--data=" + str(scene_file),
              option, "-2"])
    assert option in capsys.readouterr().err
