"""``msgfmt --check`` on the .po files ``nmt-translate`` writes for held-out real catalogues.

The German gettext catalogues of Debian packages that no corpus of this project uses (the
shipped models learnt from package descriptions and LibreOffice help; not in
``data.build.GETTEXT_PACKAGES``; not the GNU base tools, reserved for an outside evaluation):
``apt``, ``dpkg`` and ``e2fsprogs`` by default, the ``.deb``s of ``scripts.bench placeables``
(``apt-get download``, Debian bookworm). Each ``.mo`` becomes a template: its msgids, contexts
and plural entries with empty msgstrs, and ``c-format`` where the msgid is a valid C format
string with a directive and the human translation matches it (``xgettext``'s flag on C
sources; a ``.mo`` keeps no flags). ``nmt-translate checkpoint=MODEL input=X.pot
output=X.de.po po_fuzzy=false`` fills it (only doubtful entries fuzzy, so ``msgfmt`` checks
all the others; the default ``po_fuzzy=true`` marks everything fuzzy, which ``msgfmt``
skips), then ``msgfmt --check`` runs on the result.

Per catalogue: entries, plural and ``c-format`` entries, translated, fuzzy (placeables lost,
format directives not matching), ``msgfmt --check`` pass/fail, the fatal errors of ``msgfmt
--check --use-fuzzy`` (the fuzzy suggestions it would refuse), placeables kept (translated
entries whose msgid has any: the share with the same ones; ``%2$s`` counts as ``%s``), chrF
of the translations against the human ones, seconds.

    python -m scripts.bench po_check [--model gnmt-debian-en-de] [--limit N]
    python -m scripts.bench po_check --catalogues apt:apt dpkg:dpkg e2fsprogs-l10n:e2fsprogs
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import polib
from sacrebleu.metrics.chrf import CHRF

from data.build import GETTEXT_PACKAGES, RELEASE
from data.debian import download_package, extract, update_indexes
from data.placeables import find, same_placeables
from nmt.decode.po_formats import format_ok, is_c_format
from scripts.bench import common

CATALOGUES = ("apt:apt", "dpkg:dpkg", "e2fsprogs-l10n:e2fsprogs")  # package:catalogue
RESERVED = ("coreutils", "findutils", "diffutils", "grep", "sed", "tar", "gzip", "wget")
SUMMARY = re.compile(r"nmt-translate: (\d+) entries translated \((\d+) fuzzy")


def fetch(root: Path, spec: str, dest: Path) -> tuple[Path, dict[str, str]]:
    """The German ``.mo`` of ``package:catalogue`` and where it came from."""
    package, catalogue = spec.split(":", 1)
    if package in GETTEXT_PACKAGES or {package, catalogue} & set(RESERVED):
        raise SystemExit(f"po_check: {spec} is used for training or reserved")
    if not sorted((root / "debs").glob(f"{package}_*.deb")):
        update_indexes(root, RELEASE, ("en", "de"))
    deb = download_package(root, package)
    extract(deb.path, dest / package, [f"*/de/LC_MESSAGES/{catalogue}.mo"])
    found = sorted((dest / package).rglob(f"de/LC_MESSAGES/{catalogue}.mo"))
    if not found:
        raise SystemExit(f"po_check: {deb.path.name} has no German {catalogue}.mo")
    return found[0], {"package": package, "version": deb.version, "deb_sha256": deb.sha256}


def template(mo_path: Path) -> tuple[Any, Any]:
    """(the template, the human translation as a .po) of a compiled catalogue."""
    mo = polib.mofile(str(mo_path))
    pot, ref = polib.POFile(), polib.POFile()
    pot.metadata = {
        "Project-Id-Version": mo.metadata.get("Project-Id-Version", mo_path.stem),
        "Language": "",
        "MIME-Version": "1.0",
        "Content-Type": "text/plain; charset=UTF-8",
        "Content-Transfer-Encoding": "8bit",
        "Plural-Forms": "nplurals=INTEGER; plural=EXPRESSION;",
    }
    ref.metadata = dict(mo.metadata)
    for e in mo:
        texts = [e.msgid] + ([e.msgid_plural] if e.msgid_plural else [])
        flags = ["c-format"] if all(is_c_format(t) for t in texts) else []
        if flags and e.msgid_plural:
            ok = all(
                format_ok(flags, e.msgid_plural, s, j == 0) for j, s in e.msgstr_plural.items()
            )
        else:
            ok = bool(flags) and format_ok(flags, e.msgid, e.msgstr)
        flags = flags if ok else []
        common_fields = {"msgctxt": e.msgctxt, "msgid": e.msgid, "flags": list(flags)}
        if e.msgid_plural:
            empty = dict.fromkeys(e.msgstr_plural, "")
            pot.append(
                polib.POEntry(**common_fields, msgid_plural=e.msgid_plural, msgstr_plural=empty)
            )
            ref.append(polib.POEntry(**common_fields, msgid_plural=e.msgid_plural,
                                     msgstr_plural=dict(e.msgstr_plural)))  # fmt: skip
        else:
            pot.append(polib.POEntry(**common_fields, msgstr=""))
            ref.append(polib.POEntry(**common_fields, msgstr=e.msgstr))
    return pot, ref


def msgfmt(path: Path, *extra: str) -> tuple[bool, int]:
    """(``msgfmt --check`` passed, its fatal errors)."""
    r = subprocess.run(
        ["msgfmt", "--check", *extra, "-o", "/dev/null", str(path)], capture_output=True, text=True
    )
    m = re.search(r"found (\d+) fatal error", r.stderr)
    return r.returncode == 0, int(m.group(1)) if m else (0 if r.returncode == 0 else -1)


def pairs(e: Any) -> list[tuple[str, str]]:
    """(source, translation) of each form of an entry."""
    if not e.msgid_plural:
        return [(e.msgid, e.msgstr)]
    return [(e.msgid if j == 0 else e.msgid_plural, s) for j, s in sorted(e.msgstr_plural.items())]


def score(out: Any, ref: Any) -> dict[str, Any]:
    """Counts of a filled catalogue against the template's human translation."""
    done = [e for e in out if not e.obsolete and any(s for _, s in pairs(e))]
    with_placeables = [e for e in done if find(e.msgid) or find(e.msgid_plural or "")]
    kept = [
        e
        for e in with_placeables
        if all(same_placeables(a, re.sub(r"%[0-9]+\$", "%", b)) for a, b in pairs(e))
    ]
    human = {(e.msgctxt, e.msgid): e.msgstr for e in ref if not e.msgid_plural}
    singular = [e for e in done if not e.msgid_plural]
    hyps = [e.msgstr for e in singular]
    refs = [human[(e.msgctxt, e.msgid)] for e in singular]
    return {
        "entries": sum(1 for e in out if not e.obsolete),
        "plural": sum(1 for e in out if e.msgid_plural),
        "c_format": sum(1 for e in out if "c-format" in e.flags),
        "translated": len(done),
        "fuzzy": sum(1 for e in done if e.fuzzy),
        "with_placeables": len(with_placeables),
        "placeables_kept": round(len(kept) / max(1, len(with_placeables)), 4),
        "chrf": round(CHRF().corpus_score(hyps, [refs]).score, 2) if hyps else None,
    }


def check(spec: str, mo: Path, work: Path, model: str, limit: int) -> dict[str, Any]:
    name = spec.replace(":", "_")
    pot, ref = template(mo)
    if limit:
        del pot[limit:], ref[limit:]
    pot_path, ref_path, out = work / f"{name}.pot", work / f"{name}.ref.po", work / f"{name}.de.po"
    pot.save(str(pot_path))
    ref.save(str(ref_path))
    args = [f"checkpoint={model}", f"input={pot_path}", f"output={out}", "po_fuzzy=false"]
    start = time.perf_counter()
    r = subprocess.run(common.nmt_command("translate") + args, capture_output=True, text=True,
                       env=common.child_env())  # fmt: skip
    seconds = time.perf_counter() - start
    if r.returncode != 0:
        raise SystemExit(f"po_check: nmt-translate failed on {pot_path}: {r.stderr[-500:]}")
    summary = next(x for x in reversed(r.stderr.splitlines()) if SUMMARY.match(x))
    summary = f"{summary.rsplit(' -> ', 1)[0]} -> {out.name}"
    filled = polib.pofile(str(out))
    passed, errors = msgfmt(out)
    _, fuzzy_errors = msgfmt(out, "--use-fuzzy")
    keys = [(e.msgctxt, e.msgid) for e in filled] == [(e.msgctxt, e.msgid) for e in pot]
    return {
        "catalogue": spec,
        **score(filled, ref),
        "same_entries_in_order": keys,
        "msgfmt_check": "pass" if passed else "fail",
        "msgfmt_errors": errors,
        "msgfmt_use_fuzzy_errors": fuzzy_errors,
        "reference_msgfmt_check": "pass" if msgfmt(ref_path)[0] else "fail",
        "nmt_translate": summary,
        "seconds": round(seconds, 1),
    }


def main(argv: list[str] | None = None) -> int:
    ap = common.parser(__name__, __doc__)
    ap.add_argument("--model", default="gnmt-debian-en-de")
    ap.add_argument("--catalogues", nargs="+", default=list(CATALOGUES), metavar="PKG:NAME")
    ap.add_argument("--limit", type=int, default=0, help="the first N entries (0: all)")
    ap.add_argument("--root", type=Path, default=Path("~/.cache/pipenmt/placeables").expanduser())
    ap.add_argument("--out", type=Path, default=common.results_for("localisation", "po_check.json"))
    args = ap.parse_args(argv)
    if shutil.which("msgfmt") is None:
        raise SystemExit("po_check: msgfmt not found (Debian: apt-get install gettext)")
    rows = []
    with tempfile.TemporaryDirectory(prefix="po_check.") as tmp:
        work = Path(tmp)
        for spec in args.catalogues:
            mo, source = fetch(args.root, spec, work)
            rows.append({**check(spec, mo, work, args.model, args.limit), **source})
            print(rows[-1], flush=True)
    version = subprocess.run(["msgfmt", "--version"], capture_output=True, text=True).stdout
    doc = {
        "bench": "po_check",
        "command": common.command(__name__, argv),
        "machine": common.machine(),
        "model": args.model,
        "msgfmt": version.splitlines()[0] if version else "",
        "settings": "po_fuzzy=false (only doubtful entries fuzzy), model decode defaults",
        "catalogues": rows,
        "all_pass": all(r["msgfmt_check"] == "pass" for r in rows),
    }
    return common.finish(doc, args.out)
