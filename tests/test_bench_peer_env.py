"""``make bench`` from a virtual environment: the peer's venv sees the packages of the
interpreter that builds it (the project venv's torch), not only the base interpreter's
(``--system-site-packages`` alone exposes the base's: the failure a new user met)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def make_venv(path: Path, *flags: str, python: str = sys.executable) -> Path:
    subprocess.run([python, "-m", "venv", "--without-pip", *flags, str(path)], check=True,
                   timeout=120)  # fmt: skip
    return path / "bin" / "python"


def test_peer_venv_sees_the_building_venvs_packages(tmp_path: Path) -> None:
    project_py = make_venv(tmp_path / "project")  # stands for the project's .venv
    site = next((tmp_path / "project" / "lib").glob("python3*/site-packages"))
    (site / "pipenmt_marker.py").write_text("WHERE = 'project venv'\n")
    peer = tmp_path / "peer"
    build = (
        "import sys, subprocess; from scripts.bench import _joey; "
        f"subprocess.run([sys.executable, '-m', 'venv', '--without-pip', "
        f"'--system-site-packages', {str(peer)!r}], check=True); "
        f"_joey.link_parent_site(__import__('pathlib').Path({str(peer)!r}))"
    )
    r = subprocess.run([str(project_py), "-c", build], capture_output=True, text=True, cwd=ROOT,
                       timeout=120)  # fmt: skip
    assert r.returncode == 0, r.stderr
    check = "import pipenmt_marker; print(pipenmt_marker.WHERE)"
    r = subprocess.run([str(peer / "bin" / "python"), "-c", check], capture_output=True,
                       text=True, timeout=120)  # fmt: skip
    assert r.returncode == 0 and r.stdout.strip() == "project venv", r.stderr
