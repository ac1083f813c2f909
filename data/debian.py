"""Fetch Debian sources with apt, without touching the system's apt state.

A private apt configuration (own lists folder, ``Acquire::Languages {en; de; ...}``) downloads
the ``Translation-xx`` indexes of the requested languages; ``apt-get download`` fetches binary
packages.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from data.errors import DataError


@dataclass(frozen=True)
class FetchedFile:
    """A file taken from the Debian archive, with what identifies its content."""

    name: str
    path: Path
    sha256: str
    version: str = ""


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


DEFAULT_LANGS = ("en", "de")


def _apt_env(root: Path, langs: Sequence[str] | None = None) -> dict[str, str]:
    """The environment of apt commands on the private configuration in ``root``; ``langs``
    (re)writes its ``Acquire::Languages``, None keeps an existing configuration as it is."""
    (root / "lists" / "partial").mkdir(parents=True, exist_ok=True)
    (root / "parts").mkdir(parents=True, exist_ok=True)
    conf = root / "apt.conf"
    if langs is not None or not conf.is_file():
        listed = " ".join(f'"{lang}";' for lang in (langs or DEFAULT_LANGS))
        conf.write_text(
            f'Dir::Etc::Parts "{root}/parts";\n'
            f'Dir::State::Lists "{root}/lists";\n'
            f"Acquire::Languages {{ {listed} }};\n"
        )
    return {**os.environ, "APT_CONFIG": str(conf), "LC_ALL": "C"}


def _run(cmd: list[str], env: dict[str, str], cwd: Path | None = None) -> str:
    if shutil.which(cmd[0]) is None:
        raise DataError(
            f"'{cmd[0]}' not found: building the Debian corpus needs a Debian/Ubuntu system with "
            "apt (or use the shipped corpus: data=debian_de_en)"
        )
    proc = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise DataError(f"'{' '.join(cmd)}' failed (exit {proc.returncode}): {last}")
    return proc.stdout


def update_indexes(
    root: Path, release: str, langs: Sequence[str] = DEFAULT_LANGS
) -> tuple[dict[str, FetchedFile], str]:
    """``apt-get update`` into ``root`` for the languages ``langs``; return language ->
    ``Translation-<lang>`` file of ``release``/main (in the order of ``langs``) and the
    release's ``Date:``."""
    if not langs or len(set(langs)) != len(langs):
        raise DataError(f"update_indexes needs distinct languages, got {list(langs)}")
    env = _apt_env(root, langs)
    _run(["apt-get", "update", "-q"], env)
    lists = root / "lists"
    found: dict[str, FetchedFile] = {}
    for lang in langs:
        matches = sorted(lists.glob(f"*_dists_{release}_main_i18n_Translation-{lang}"))
        if not matches:
            raise DataError(
                f"apt-get update gave no {release}/main Translation-{lang} in {lists} "
                f"(is {release} in the apt sources?)"
            )
        found[lang] = FetchedFile(f"Translation-{lang}", matches[0], sha256_file(matches[0]))
    return found, _release_date(lists, release)


def _release_date(lists: Path, release: str) -> str:
    """The ``Date:`` of the release's ``InRelease`` file ("" when there is none)."""
    for inrelease in lists.glob(f"*_dists_{release}_InRelease"):
        for line in inrelease.read_text(errors="replace").splitlines():
            if line.startswith("Date:"):
                return line.split(":", 1)[1].strip()
    return ""


def download_package(root: Path, name: str) -> FetchedFile:
    """``apt-get download NAME`` into ``root/debs`` (reused when already there)."""
    env = _apt_env(root)
    debs = root / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    existing = sorted(debs.glob(f"{name}_*.deb"))
    if not existing:
        _run(["apt-get", "download", "-q", name], env, cwd=debs)
        existing = sorted(debs.glob(f"{name}_*.deb"))
    if not existing:
        raise DataError(f"apt-get download {name} left no .deb in {debs}")
    deb = existing[-1]
    version = _run(["dpkg-deb", "-f", str(deb), "Version"], env).strip()
    return FetchedFile(name, deb, sha256_file(deb), version)


def extract(deb: Path, dest: Path, members: list[str] | None = None) -> Path:
    """Unpack a .deb (all files, or tar wildcards ``members``) into ``dest``."""
    dest.mkdir(parents=True, exist_ok=True)
    if members is None:
        _run(["dpkg-deb", "-x", str(deb), str(dest)], dict(os.environ))
        return dest
    tar = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE)
    cmd = ["tar", "-x", "-C", str(dest), "--wildcards", *members]
    proc = subprocess.run(cmd, stdin=tar.stdout, capture_output=True, check=False)
    tar.wait()
    if tar.returncode != 0:
        raise DataError(f"dpkg-deb --fsys-tarfile {deb} failed (exit {tar.returncode})")
    # tar exits 2 when no member matches the wildcards: a package without German catalogs.
    if proc.returncode not in (0, 2):
        raise DataError(f"extracting {members} from {deb} failed: {proc.stderr.decode()[-200:]}")
    return dest
