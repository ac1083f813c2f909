"""gettext catalogues in ``nmt-translate``: ``input=foo.pot output=de.po`` (``.po``/``.pot``, or
``input_format=po``).

The catalogue is read with ``polib``; a malformed one is a one-line user error naming
``file:line``, before the model loads. Every untranslated entry (``msgstr`` empty; a plural
entry: every ``msgstr[n]`` empty) is translated, all of them in one batch through the
:class:`nmt.translator.Translator`'s model (each text once, line by line, placeables masked and
restored as in :func:`nmt.decode.translate.translate_masked`); the header entry and obsolete
entries are not. ``msgctxt``, comments, flags, references and obsolete entries stay as they
are; entries come out in the order they came in. A plural entry gets ``nplurals`` forms of
the target language (``msgstr[0]`` from the ``msgid``'s translation, the others from the
``msgid_plural``'s; one form: the ``msgid_plural``'s), and the header its ``Language`` and
``Plural-Forms`` (:data:`nmt.decode.po_formats.PLURAL_FORMS`; a ``.po`` already for that
language keeps its own).

What it writes is marked ``#, fuzzy`` (``po_fuzzy=true``, the default: for review); with
``po_fuzzy=false`` only the entries whose translation lost or repeated a placeable, or whose
``c-format``/``python-format``/... directives do not match the source's
(:func:`nmt.decode.po_formats.format_ok`), are fuzzy. ``msgfmt --check`` skips fuzzy entries
(``--use-fuzzy`` would check them), so the file passes it either way; the suggestion stays for
the reviewer. C directives that a translation reorders are numbered (``%2$s ... %1$s``) so they
stay valid. Entries that already have a translation are left alone unless ``po_overwrite=true``.
"""

from __future__ import annotations

import codecs
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polib

from data.placeables import Lines, Masked, mask, restore, same_placeables, split_lines
from nmt.config import AppConfig
from nmt.decode import translate
from nmt.decode.po_formats import PluralRule, format_flags, format_ok, plural_forms, positional
from nmt.errors import UserError

Catalogue = Any  # polib.POFile (polib ships no type hints)
Entry = Any  # polib.POEntry
_STRING = re.compile(r'(?:(?:msgctxt|msgid|msgid_plural|msgstr|msgstr\[[0-9]+\])\s*)?"(.*)"')
_WORD = re.compile(r"[^\W\d_]")  # a letter: text worth translating
_ESCAPES = re.compile(r'(?:[^"\\]|\\[ntrvbf"\\])*')  # the escapes polib reads and writes back


def is_catalogue(cfg: AppConfig) -> bool:
    """Whether ``nmt-translate`` reads a gettext catalogue: ``input_format=po``, or ``auto``
    and a ``.po``/``.pot`` input (stdin: the output's suffix)."""
    fmt = str(cfg.input_format)
    if fmt not in ("auto", "text", "po"):
        raise UserError(f"input_format={fmt}: expected auto, text or po")
    if fmt != "auto":
        return fmt == "po"
    name = str(cfg.output) if str(cfg.input) == "-" else str(cfg.input)
    return Path(name).suffix.lower() in (".po", ".pot")


def read_catalogue(path: str) -> Catalogue:
    """The catalogue at ``path`` (``-``: stdin); a malformed one is a one-line
    :class:`UserError` naming ``file:line``."""
    name = "<stdin>" if path == "-" else path
    try:
        raw = sys.stdin.buffer.read() if path == "-" else Path(path).expanduser().read_bytes()
    except OSError as err:
        raise UserError(f"cannot read input {name}: {err.strerror or err}") from None
    m = re.search(rb"charset=([A-Za-z0-9_.:-]+)", raw)
    charset = m.group(1).decode() if m else "utf-8"
    try:
        codecs.lookup(charset)
    except LookupError:  # a template's "charset=CHARSET"
        charset = "utf-8"
    try:
        text = raw.decode(charset).removeprefix("\ufeff")
    except UnicodeDecodeError as err:
        line = raw.count(b"\n", 0, err.start) + 1
        raise UserError(f"{name}:{line}: invalid {charset} ({err.reason})") from None
    _check_strings(text, name)
    try:  # a trailing newline: polib never takes the text for a file name
        po = polib.pofile(text if text.endswith("\n") else text + "\n", encoding="utf-8")
    except (OSError, ValueError) as err:
        detail = " ".join(str(err).split())
        at = re.search(r"\(line ([0-9]+)\)", detail)
        reason = detail.split("): ", 1)[1] if "): " in detail else "syntax error"
        where = f"{name}:{at.group(1)}" if at else name
        raise UserError(f"{where}: not a gettext catalogue ({reason})") from None
    seen: set[tuple[str | None, str]] = set()
    for entry in po:
        key = (entry.msgctxt, entry.msgid)
        if not entry.obsolete and key in seen:
            raise UserError(f"{name}:{entry.linenum}: duplicate message {entry.msgid[:60]!r}")
        seen.add(key)
    return po


def _check_strings(text: str, name: str) -> None:
    """Each keyword or continuation line a quoted string with escapes polib keeps (``\\n``,
    ``\\t``, ``\\"``, ``\\\\``, ...): what polib lets through silently is refused here."""
    for number, line in enumerate(text.splitlines(), start=1):
        s = line.strip()
        if s.startswith("#~"):
            s = s[2:].strip()
            if s.startswith("|"):
                continue
        if not s or s.startswith("#"):
            continue
        m = _STRING.fullmatch(s)
        if m is None:
            raise UserError(f"{name}:{number}: not a gettext catalogue (cannot read {s[:40]!r})")
        if not _ESCAPES.fullmatch(m.group(1)):
            bad = re.search(r'(?<!\\)(?:\\\\)*(\\[^ntrvbf"\\]|")', m.group(1))
            what = f"escape {bad.group(1)}" if bad and bad.group(1) != '"' else "unescaped quote"
            raise UserError(f"{name}:{number}: not a gettext catalogue ({what})")


def untranslated(entry: Entry) -> bool:
    """No translation: ``msgstr`` empty, or every ``msgstr[n]`` of a plural entry."""
    if entry.msgid_plural:
        return not any(entry.msgstr_plural.values())
    return not entry.msgstr


def plural_rule(po: Catalogue, lang: str, name: str) -> PluralRule | None:
    """The plural forms to fill: a ``.po`` for ``lang`` keeps its own valid header, else the
    table's for ``lang``, else the file's own; ``None`` when neither is known (a user error if
    the catalogue has plural entries)."""
    mine, code = str(po.metadata.get("Language", "")).strip(), lang.split("_")[0]
    if mine and mine.replace("-", "_").split("_")[0].lower() != code.lower():
        raise UserError(
            f"{name} is a catalogue for {mine} (its Language header); this model translates "
            f"into {lang}"
        )
    known = [po.metadata.get("Plural-Forms", "")] if mine else []
    known += [plural_forms(lang) or "", po.metadata.get("Plural-Forms", "")]
    for header in filter(None, known):
        try:
            return PluralRule.parse(header)
        except ValueError:  # e.g. a template's "nplurals=INTEGER; plural=EXPRESSION;"
            continue
    if any(e.msgid_plural and not e.obsolete for e in po):
        raise UserError(
            f"{name}: the plural forms of {lang} are not known here; give the input a "
            "Plural-Forms header (GNU gettext manual, 'Plural forms')"
        )
    return None


@dataclass
class Counts:
    """What a fill did, in entries (the header not counted)."""

    entries: int = 0
    translated: int = 0
    fuzzy: int = 0
    kept: int = 0  # already translated, left alone
    failed: int = 0  # no translation came out: left untranslated
    placeables_lost: int = 0
    format_mismatch: int = 0


@dataclass(frozen=True)
class _Filled:
    text: str
    placeables_ok: bool


class _Batch:
    """The texts of a catalogue's entries, each cut into lines and masked once, translated in
    one call."""

    def __init__(self, placeables: bool, tokenizer: Any) -> None:
        self.placeables, self.tokenizer = placeables, tokenizer
        self.texts: dict[str, tuple[Lines, list[Masked], list[str]]] = {}
        self.hyps: dict[str, str] = {}

    def add(self, text: str) -> None:
        if text not in self.texts:
            lines = split_lines(text)
            cores = [core for _, core, _ in lines.parts]
            masks = [self._mask(c) for c in cores]
            self.texts[text] = lines, masks, re.split(r"\r\n|\n", text)

    def _mask(self, core: str) -> Masked:
        """A line's placeables masked (characters the vocabulary lacks too), or as it is."""
        if not self.placeables:
            return Masked(core, ())
        return translate.mask_unknown(mask(core), self.tokenizer)

    def run(self, translator: Any, progress: Any = None) -> None:
        import dataclasses

        masked = (m.text for _, ms, _ in self.texts.values() for m in ms)
        todo = list(dict.fromkeys(x for x in masked if _WORD.search(x)))
        if progress is not None:
            progress.reset(total=len(todo))
        settings = dataclasses.replace(translator.decode, nbest=1)
        constrain = self.placeables and settings.placeable_constraint  # the texts are masked
        hyps = translate.translate_lines(
            translator.model, translator.tokenizer, [translate.one_line(x) for x in todo], settings,
            progress, constrain,
        )  # fmt: skip
        self.hyps = {src: h[0][0].strip() for src, h in zip(todo, hyps, strict=True)}

    def result(self, text: str, c_format: bool) -> _Filled | None:
        """The translation of ``text`` (C directives numbered where it reordered them), or
        ``None`` when a line of it came out empty."""
        lines, masks, raw = self.texts[text]
        out: list[str] = []
        ok = True
        for (_, core, _), m, blank in zip(lines.parts, masks, raw, strict=True):
            if not core:  # an empty line or blanks only: as it was ("...:\n " ends in a blank)
                out.append(blank)
                continue
            hyp = self.hyps.get(m.text, "") if _WORD.search(m.text) else m.text  # "%s: %s": as is
            if not hyp:
                return None
            if not self.placeables:
                out.append(hyp)
                ok = ok and same_placeables(core, hyp)
                continue
            plain, kept = restore(hyp, m)
            ok = ok and kept and same_placeables(core, plain)
            out.append(restore(hyp, positional(core, m, hyp))[0] if c_format else plain)
        return _Filled(lines.join(out), ok)


def fill_catalogue(
    po: Catalogue,
    translator: Any,
    rule: PluralRule | None,
    *,
    fuzzy: bool = True,
    overwrite: bool = False,
    placeables: bool = True,
    progress: Any = None,
) -> Counts:
    """Translate the entries of ``po`` in place (see the module docstring)."""
    counts = Counts(entries=sum(1 for e in po if not e.obsolete))
    todo = [e for e in po if not e.obsolete and e.msgid and (overwrite or untranslated(e))]
    counts.kept = counts.entries - len(todo)
    nplurals = rule.nplurals if rule else 2
    batch = _Batch(placeables, translator.tokenizer)
    for e in todo:
        if not e.msgid_plural or nplurals > 1:
            batch.add(e.msgid)
        if e.msgid_plural:
            batch.add(e.msgid_plural)
    batch.run(translator, progress)
    for e in todo:
        c_format = "c-format" in format_flags(e.flags)
        forms: list[tuple[_Filled | None, bool]] = []
        if not e.msgid_plural:
            single = batch.result(e.msgid, c_format)
            forms.append((single, single is not None and _valid(e.flags, e.msgid, single.text)))
        for j in range(nplurals if e.msgid_plural else 0):
            assert rule is not None  # plural_rule refuses plural entries without one
            relaxed = rule.relaxed(j)
            many = batch.result(e.msgid_plural, c_format)
            cand = batch.result(e.msgid, c_format) if j == 0 and nplurals > 1 else many
            ok = cand is not None and _valid(e.flags, e.msgid_plural, cand.text, relaxed)
            if not ok and many is not None and _valid(e.flags, e.msgid_plural, many.text):
                cand, ok = many, True  # e.g. "One file" where form 0 stands for 1, 21, 31, ...
            forms.append((cand, ok))
        if any(f is None for f, _ in forms):
            counts.failed += 1
            if e.msgid_plural and untranslated(e):
                e.msgstr_plural = dict.fromkeys(range(nplurals), "")
            continue
        _write(e, [f.text for f, _ in forms if f is not None])
        lost = not all(f.placeables_ok for f, _ in forms if f is not None)
        mismatch = not all(ok for _, ok in forms)
        counts.translated += 1
        counts.placeables_lost += lost
        counts.format_mismatch += mismatch
        if fuzzy or lost or mismatch:
            counts.fuzzy += 1
            if "fuzzy" not in e.flags:
                e.flags.insert(0, "fuzzy")
        elif "fuzzy" in e.flags:  # an old fuzzy translation replaced by a checked one
            e.flags.remove("fuzzy")
            e.previous_msgctxt = e.previous_msgid = e.previous_msgid_plural = None
    return counts


def _valid(flags: list[str], source: str, text: str, relaxed: bool = False) -> bool:
    """``msgfmt --check``'s tests of a translation: its format directives, and a line break
    at the start and at the end where the source has one."""
    ends = (text[:1] == "\n") == (source[:1] == "\n") and (text[-1:] == "\n") == (
        source[-1:] == "\n"
    )
    return ends and format_ok(flags, source, text, relaxed)


def _write(entry: Entry, texts: list[str]) -> None:
    if entry.msgid_plural:
        entry.msgstr_plural = dict(enumerate(texts))
    else:
        entry.msgstr = texts[0]


def set_header(
    po: Catalogue, lang: str, rule: PluralRule | None, generator: str, changed: bool = True
) -> None:
    """The target language's header fields (a ``Language`` already there stays: ``de_AT`` for
    ``de``); the file is written as UTF-8. ``changed``: entries were written (the revision
    date and generator say so)."""
    md = po.metadata
    if not str(md.get("Language", "")).strip():
        md["Language"] = lang
    if rule is not None:
        md["Plural-Forms"] = rule.header
    md.setdefault("MIME-Version", "1.0")
    md["Content-Type"] = "text/plain; charset=UTF-8"
    if md.get("Content-Transfer-Encoding", "ENCODING") == "ENCODING":
        md["Content-Transfer-Encoding"] = "8bit"
    if changed:
        md["PO-Revision-Date"] = time.strftime("%Y-%m-%d %H:%M%z")
        md["X-Generator"] = generator
    po.encoding = "utf-8"


def translate_catalogue_cli(cfg: AppConfig) -> dict[str, Any]:
    """``nmt-translate`` on a gettext catalogue (input and output paths already checked)."""
    from tqdm import tqdm

    from nmt.decode.line_files import open_output
    from nmt.machine.calibrate import announce
    from nmt.translator import Translator

    if int(cfg.parallel.nproc) > 1:
        raise UserError(
            f"parallel.nproc={cfg.parallel.nproc}: a gettext catalogue is translated in one "
            "process; use parallel.nproc=1"
        )
    if int(cfg.decode.nbest) != 1:
        raise UserError(
            f"decode.nbest={cfg.decode.nbest}: a gettext catalogue takes one translation per "
            "entry; leave decode.nbest at 1"
        )
    name = "<stdin>" if str(cfg.input) == "-" else str(cfg.input)
    po = read_catalogue(str(cfg.input))  # a bad file fails before the model loads
    translator = Translator(str(cfg.checkpoint), cfg.decode)
    lang = str(cfg.decode.target_lang or translator.target_lang).replace("-", "_")
    rule = plural_rule(po, lang, name)
    with tqdm(unit="sent", file=sys.stderr, disable=None, desc="translate") as bar:
        counts = fill_catalogue(
            po,
            translator,
            rule,
            fuzzy=bool(cfg.po_fuzzy),
            overwrite=bool(cfg.po_overwrite),
            placeables=bool(cfg.decode.placeables),
            progress=bar,
        )
    set_header(po, lang, rule, f"pipenmt nmt-translate ({translator.name})", counts.translated > 0)
    text = str(po)
    with open_output(str(cfg.output), str(cfg.input)) as out:
        out.write(text if text.endswith("\n") else text + "\n")
    announce(translator.arithmetic.choice)
    failed = f", {counts.failed} left untranslated" if counts.failed else ""
    where = "stdout" if str(cfg.output) == "-" else str(cfg.output)
    print(
        f"nmt-translate: {counts.translated} entries translated ({counts.fuzzy} fuzzy{failed}) "
        f"-> {where}",
        file=sys.stderr,
    )
    return {
        "entries": counts.entries,
        "translated": counts.translated,
        "fuzzy": counts.fuzzy,
        "kept": counts.kept,
        "failed": counts.failed,
        "placeables_lost": counts.placeables_lost,
        "format_mismatch": counts.format_mismatch,
    }
