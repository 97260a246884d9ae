"""The package as users install it: a wheel (not the editable checkout) holds the code, the web page's static
files and the py.typed marker, and its command line runs."""
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    out = tmp_path_factory.mktemp("wheel")
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "--no-build-isolation",
                            "-q", "-w", str(out)], capture_output=True, text=True)
    if built.returncode != 0 and "No module named" in built.stderr:
        pytest.skip(f"cannot build a wheel here: {built.stderr.strip().splitlines()[-1]}")
    assert built.returncode == 0, built.stderr
    (path,) = out.glob("attend_infer_repeat-*.whl")
    return path


def test_the_wheel_ships_the_page_and_the_marker(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for name in ("static/index.html", "static/app.js", "static/style.css", "py.typed", "__main__.py", "cli.py"):
        assert f"attend_infer_repeat/{name}" in names


def test_the_installed_wheel_runs_its_command_line(wheel, tmp_path):
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(wheel)],
                   check=True, capture_output=True)
    env = {**os.environ, "PYTHONPATH": str(site)}  # ahead of the editable checkout on sys.path
    probe = ("import attend_infer_repeat, attend_infer_repeat.serve as s; print(attend_infer_repeat.__file__); "
             "print((s._static_dir() / 'index.html').is_file())")
    where, page = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env,
                                 check=True).stdout.split()
    assert Path(where).is_relative_to(site) and page == "True"
    for argv in (["--version"], ["serve", "--help"], ["train", "--help"]):
        run = subprocess.run([sys.executable, "-m", "attend_infer_repeat", *argv], capture_output=True, text=True,
                             env=env)
        assert run.returncode == 0, run.stderr
