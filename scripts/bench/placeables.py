"""How many placeables a shipped model keeps, with and without masking (``decode.placeables``).

Held-out strings: the German gettext catalogues of a few Debian packages that no corpus of
this project uses (not in ``data.build.GETTEXT_PACKAGES``, not the GNU base tools that are
reserved for an outside evaluation), fetched with ``apt-get download``. A string counts when
its English msgid has placeables and the human German translation keeps the same ones; a
deterministic sample (by crc32 of the msgid) is translated three times by the
same :class:`nmt.translator.Translator`: placeables as text; masked and restored; masked with
the search constrained to write each sentinel once (``decode.placeable_constraint``). Reported:
the share of strings whose translation has the source's placeables as a multiset, overall and
per kind (a string counts for each kind it holds), and chrF against the human translations.

    python -m scripts.bench placeables [--model gnmt-debian-en-de] [--sample 600] [--reverse]

``--reverse`` translates the German msgstr into English (a de-en model), judged against the
msgid.
"""

from __future__ import annotations

import tempfile
import zlib
from collections import Counter
from pathlib import Path
from typing import Any

from sacrebleu.metrics.chrf import CHRF

from data.build import GETTEXT_PACKAGES, PLACEABLES_HELD_OUT, RELEASE, RESERVED
from data.debian import download_package, extract, update_indexes
from data.placeables import find, same_placeables
from data.sources.gettext_mo import parse_mo
from nmt.translator import Translator
from scripts.bench import common

PACKAGES = PLACEABLES_HELD_OUT


def held_out_pairs(root: Path, packages: tuple[str, ...]) -> list[tuple[str, str, str]]:
    """(catalogue, msgid, msgstr) with placeables on both sides, the same ones."""
    assert not set(packages) & (set(GETTEXT_PACKAGES) | set(RESERVED))
    update_indexes(root, RELEASE, ("en", "de"))
    out: list[tuple[str, str, str]] = []
    seen: set[str] = set()
    with tempfile.TemporaryDirectory() as tmp:
        for pkg in packages:
            deb = download_package(root, pkg)
            dest = extract(deb.path, Path(tmp) / pkg, ["*/de/LC_MESSAGES/*.mo"])
            for mo in sorted(dest.rglob("de/LC_MESSAGES/*.mo")):
                if mo.stem in RESERVED:
                    continue
                for en, de in parse_mo(mo.read_bytes(), str(mo)):
                    if en not in seen and find(en) and same_placeables(en, de):
                        seen.add(en)
                        out.append((f"{pkg}:{mo.stem}", en, de))
    return out


def rates(sources: list[str], hyps: list[str]) -> dict[str, Any]:
    """Share kept overall and per kind."""
    kept = [same_placeables(s, h) for s, h in zip(sources, hyps, strict=True)]
    per_kind: dict[str, list[bool]] = {}
    for s, h in zip(sources, hyps, strict=True):
        want = Counter((p.kind, p.text) for p in find(s))
        got = Counter((p.kind, p.text) for p in find(h))
        for kind in {k for k, _ in want}:
            ok = all(got[key] == n for key, n in want.items() if key[0] == kind)
            per_kind.setdefault(kind, []).append(ok)
    return {
        "kept": round(sum(kept) / len(kept), 4),
        "by_kind": {
            k: {"strings": len(v), "kept": round(sum(v) / len(v), 4)}
            for k, v in sorted(per_kind.items())
        },
    }


def main(argv: list[str] | None = None) -> int:
    ap = common.parser(__name__, __doc__)
    ap.add_argument("--model", default="gnmt-debian-en-de")
    ap.add_argument("--sample", type=int, default=600)
    ap.add_argument("--reverse", action="store_true", help="German -> English (a de-en model)")
    ap.add_argument("--root", type=Path, default=Path("~/.cache/pipenmt/placeables").expanduser())
    ap.add_argument(
        "--out", type=Path, default=common.results_for("localisation", "placeables.json")
    )
    args = ap.parse_args(argv)
    pairs = held_out_pairs(args.root, PACKAGES)
    pairs.sort(key=lambda p: zlib.crc32(p[1].encode()))
    sample = pairs[: args.sample]
    sources, refs = [en for _, en, _ in sample], [de for _, _, de in sample]
    if args.reverse:
        sources, refs = refs, sources
    tr = Translator(args.model)
    chrf = CHRF()
    modes: dict[str, Any] = {}
    for name, masked, constrained in (
        ("as_text", False, False),
        ("masked", True, False),
        ("constrained", True, True),
    ):
        got = tr.translate(sources, placeables=masked, placeable_constraint=constrained)
        hyps = [h[0].text for h in got]
        modes[name] = {
            **rates(sources, hyps),
            "chrf": round(chrf.corpus_score(hyps, [refs]).score, 2),
        }
        print(name, modes[name])
    doc = {
        "bench": "placeables",
        "command": common.command(__name__, argv),
        "machine": common.machine(),
        "model": args.model,
        "direction": "de-en" if args.reverse else "en-de",
        "decode": {"arithmetic": tr.arithmetic.name, "beam_size": tr.decode.beam_size},
        "packages": list(PACKAGES),
        "held_out_strings": len(pairs),
        "sample": len(sample),
        "catalogues": dict(Counter(c for c, _, _ in sample)),
        "modes": modes,
    }
    return common.finish(doc, args.out)
