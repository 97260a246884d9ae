"""The package as users install it: ``python -m build`` makes an sdist and, from that sdist, a wheel; both hold the
code, the web page's static files and the py.typed marker; the sdist installs into a fresh virtual environment
(not the editable checkout) whose ``air`` command runs and serves its page.

Nothing is downloaded: the builds use the installed setuptools (no build isolation), and the fresh environment
reaches torch and the other dependencies through a .pth line naming this interpreter's site-packages, so torch
is never installed again."""
import os
import re
import signal
import subprocess
import sys
import sysconfig
import tarfile
import threading
import urllib.request
import zipfile
from pathlib import Path

import pytest
from helpers import untrained_checkpoint

ROOT = Path(__file__).resolve().parent.parent
#: what a user's environment needs beside the code: the page air serve shows and the typing marker
SHIPPED = ("static/index.html", "static/app.js", "static/style.css", "py.typed", "__main__.py", "cli/__init__.py")


@pytest.fixture(scope="module")
def dists(tmp_path_factory) -> dict[str, Path]:
    """{"sdist": ..., "wheel": ...} as ``python -m build`` makes them from the checkout."""
    out = tmp_path_factory.mktemp("dist")
    built = subprocess.run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(ROOT)],
                           capture_output=True, text=True)
    if built.returncode != 0 and "No module named build" in built.stderr:
        pytest.skip("the build package is missing: pip install -e '.[dev]' (or ./setup.sh) installs it")
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    (sdist,) = out.glob("attend_infer_repeat-*.tar.gz")
    (wheel,) = out.glob("attend_infer_repeat-*.whl")
    return {"sdist": sdist, "wheel": wheel}


def test_the_wheel_ships_the_page_and_the_marker(dists):
    names = set(zipfile.ZipFile(dists["wheel"]).namelist())
    for name in SHIPPED:
        assert f"attend_infer_repeat/{name}" in names


def test_the_sdist_ships_the_page_the_marker_and_a_runnable_test_suite(dists):
    with tarfile.open(dists["sdist"]) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    for name in SHIPPED:
        assert f"src/attend_infer_repeat/{name}" in names
    # the tests come whole (setuptools alone would take test_*.py without the conftest.py they all need), with the
    # notebook one of them runs
    assert {"pyproject.toml", "README.md", "tests/conftest.py", "tests/test_packaging.py",
            "examples/tutorial.ipynb"} <= names
    assert not any("__pycache__" in n or n.endswith(".pyc") for n in names)


def _fresh_venv(path: Path) -> Path:
    """A new virtual environment that sees this interpreter's packages (torch among them) after its own."""
    made = subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)], capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"cannot make a virtual environment here: {made.stderr.strip().splitlines()[-1:]}")
    python = path / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    own = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                         capture_output=True, text=True, check=True).stdout.strip()
    # a plain path line, so that the checkout's editable-install .pth in there is not read: only the installed copy
    # of attend_infer_repeat can be imported
    ours = dict.fromkeys(sysconfig.get_paths()[k] for k in ("purelib", "platlib"))
    (Path(own) / "dependencies.pth").write_text("".join(f"{p}\n" for p in ours))
    return python


def test_the_sdist_installs_into_a_fresh_venv_and_air_runs_and_serves(dists, tmp_path):
    python = _fresh_venv(tmp_path / "venv")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # nothing of the checkout on sys.path
    installed = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps",
                                "--no-index", "--no-build-isolation", "-q", str(dists["sdist"])],
                               capture_output=True, text=True, env=env)
    assert installed.returncode == 0, installed.stderr[-3000:]
    air = python.parent / ("air.exe" if os.name == "nt" else "air")
    probe = ("import attend_infer_repeat, attend_infer_repeat.serve as s; print(attend_infer_repeat.__file__); "
             "print((s._static_dir() / 'index.html').is_file())")
    where, page = subprocess.run([str(python), "-c", probe], capture_output=True, text=True, env=env,
                                 check=True, cwd=tmp_path).stdout.split()
    assert Path(where).is_relative_to(tmp_path / "venv") and page == "True"

    version = subprocess.run([str(air), "--version"], capture_output=True, text=True, env=env)
    assert version.returncode == 0 and version.stdout.startswith("attend-infer-repeat "), version.stderr
    helped = subprocess.run([str(air), "--help"], capture_output=True, text=True, env=env)
    assert helped.returncode == 0 and all(c in helped.stdout for c in ("train", "serve", "infer")), helped.stderr

    checkpoint = untrained_checkpoint(tmp_path)
    server = subprocess.Popen([str(air), "serve", str(checkpoint), "--port", "0", "--threads", "1"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path)
    try:
        url = _served_url(server, timeout=60)
        with urllib.request.urlopen(url, timeout=10) as r:
            assert r.status == 200 and "<title>AIR: attend, infer, repeat</title>" in r.read().decode()
        for name in ("app.js", "style.css"):  # the page's own files, from the installed package
            with urllib.request.urlopen(f"{url}static/{name}", timeout=10) as r:
                assert r.status == 200 and r.read()
        server.send_signal(signal.SIGINT)  # Ctrl-C: a clean stop
        out, err = server.communicate(timeout=30)
        assert server.returncode == 0 and "air serve: stopped" in out, err[-2000:]
    finally:
        if server.poll() is None:
            server.kill()
            server.communicate()


def _served_url(server: subprocess.Popen, timeout: float) -> str:
    """The URL ``air serve`` prints once it listens (its first line of output)."""
    line: list[str] = []
    reader = threading.Thread(target=lambda: line.append(server.stdout.readline()), daemon=True)
    reader.start()
    reader.join(timeout)
    found = re.search(r"http://\S+/", line[0]) if line else None
    if not found:
        server.kill()
        pytest.fail(f"air serve printed no URL within {timeout} s: {line} {server.stderr.read()[-2000:]}")
    return found.group(0)
