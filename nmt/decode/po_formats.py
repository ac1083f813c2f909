"""What keeps a gettext catalogue valid: plural forms per language, and format strings.

:data:`PLURAL_FORMS` is GNU gettext's table of ``Plural-Forms`` headers (the manual's
"Plural forms" node) for common languages; :class:`PluralRule` evaluates such a header's C
expression for n = 0..1000 as ``msgfmt`` does, to know which forms stand for one number only
(``msgfmt --check`` lets those drop a directive, e.g. ``msgstr[0] "eine Datei"`` for ``%d
files``).

:func:`format_ok` is the check of ``msgfmt --check-format`` for a translation against its
``msgid`` (or ``msgid_plural``): ``c-format`` (arguments by position or order, their types;
no stray ``%``), ``python-format`` (named or positional), ``python-brace-format`` (field
names); any other ``*-format`` flag by the multiset of its ``%x``, ``{...}`` and ``$x`` pieces.
It is stricter than ``msgfmt`` where the two could differ. :func:`positional` renumbers
``c-format`` directives (``%s`` -> ``%2$s``) when a translation puts them in another order.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from data.placeables import Masked, find

_ONE = "nplurals=1; plural=0;"
_TWO = "nplurals=2; plural=(n != 1);"
_TWO_LANGS = "en de nl sv da nb nn no fo es pt it ca gl eu bg el fi et he eo hu tr"
_TWO_FR = "nplurals=2; plural=(n > 1);"
_SLAVIC = (
    "nplurals=3; plural=(n%10==1 && n%100!=11 ? 0 : "
    "n%10>=2 && n%10<=4 && (n%100<10 || n%100>=20) ? 1 : 2);"
)
# ``Plural-Forms`` by language (GNU gettext manual, "Plural forms"); ll_CC before ll.
PLURAL_FORMS: dict[str, str] = {
    **dict.fromkeys(["ja", "ko", "vi", "th", "zh", "zh_CN", "zh_TW", "id"], _ONE),
    **dict.fromkeys(_TWO_LANGS.split(), _TWO),
    **dict.fromkeys(["fr", "pt_BR"], _TWO_FR),
    **dict.fromkeys(["ru", "uk", "be", "hr", "sr", "bs"], _SLAVIC),
    "cs": "nplurals=3; plural=(n==1) ? 0 : (n>=2 && n<=4) ? 1 : 2;",
    "sk": "nplurals=3; plural=(n==1) ? 0 : (n>=2 && n<=4) ? 1 : 2;",
    "pl": "nplurals=3; plural=(n==1 ? 0 : n%10>=2 && n%10<=4 && (n%100<10 || n%100>=20) ? 1 : 2);",
    "lt": "nplurals=3; plural=(n%10==1 && n%100!=11 ? 0 : n%10>=2 && (n%100<10 || n%100>=20) "
    "? 1 : 2);",
    "lv": "nplurals=3; plural=(n%10==1 && n%100!=11 ? 0 : n != 0 ? 1 : 2);",
    "ro": "nplurals=3; plural=(n==1 ? 0 : (n==0 || (n%100 > 0 && n%100 < 20)) ? 1 : 2);",
    "ga": "nplurals=3; plural=n==1 ? 0 : n==2 ? 1 : 2;",
    "sl": "nplurals=4; plural=(n%100==1 ? 0 : n%100==2 ? 1 : n%100==3 || n%100==4 ? 2 : 3);",
    "ar": "nplurals=6; plural=(n==0 ? 0 : n==1 ? 1 : n==2 ? 2 : n%100>=3 && n%100<=10 ? 3 : "
    "n%100>=11 ? 4 : 5);",
}


def plural_forms(lang: str) -> str | None:
    """The ``Plural-Forms`` header of language ``lang`` (``de``, ``pt_BR``, ``pt-BR``), or
    ``None`` for a language the table does not know."""
    code = lang.strip().replace("-", "_")
    return PLURAL_FORMS.get(code) or PLURAL_FORMS.get(code.split("_")[0].lower())


# ------------------------------------------------------------------ plural expressions

_TOKEN = re.compile(r"\s*(?:(\d+)|(n)|(\|\||&&|==|!=|<=|>=|[-+*/%<>!?:()]))")
_BINARY: dict[str, Callable[[int, int], int]] = {
    "||": lambda a, b: int(bool(a) or bool(b)),
    "&&": lambda a, b: int(bool(a) and bool(b)),
    "==": lambda a, b: int(a == b),
    "!=": lambda a, b: int(a != b),
    "<": lambda a, b: int(a < b),
    "<=": lambda a, b: int(a <= b),
    ">": lambda a, b: int(a > b),
    ">=": lambda a, b: int(a >= b),
    "+": lambda a, b: a + b,
    "-": lambda a, b: a - b,
    "*": lambda a, b: a * b,
    "/": lambda a, b: a // b,
    "%": lambda a, b: a % b,
}
_LEVELS = (("||",), ("&&",), ("==", "!="), ("<", "<=", ">", ">="), ("+", "-"), ("*", "/", "%"))
Expr = Callable[[int], int]


def _apply(fn: Callable[[int, int], int], a: Expr, b: Expr) -> Expr:
    return lambda n: fn(a(n), b(n))


class _Parser:
    """Recursive descent over gettext's plural grammar (C's ?:, ||, &&, comparisons,
    arithmetic, !, parentheses, integers and n)."""

    def __init__(self, text: str) -> None:
        self.tokens: list[str] = []
        at = 0
        text = text.strip().rstrip(";").strip()
        while at < len(text):
            m = _TOKEN.match(text, at)
            if m is None or m.end() == at:
                raise ValueError(f"unexpected {text[at : at + 10]!r}")
            self.tokens.append(m.group(m.lastindex or 0))
            at = m.end()
        self.at = 0

    def take(self, *options: str) -> str | None:
        if self.at < len(self.tokens) and self.tokens[self.at] in options:
            self.at += 1
            return self.tokens[self.at - 1]
        return None

    def parse(self) -> Expr:
        expr = self.conditional()
        if self.at != len(self.tokens):
            raise ValueError(f"unexpected {self.tokens[self.at]!r}")
        return expr

    def conditional(self) -> Expr:
        cond = self.binary(0)
        if self.take("?") is None:
            return cond
        yes = self.conditional()
        if self.take(":") is None:
            raise ValueError("'?' without ':'")
        no = self.conditional()
        return lambda n: yes(n) if cond(n) else no(n)

    def binary(self, level: int) -> Expr:
        if level == len(_LEVELS):
            return self.unary()
        left = self.binary(level + 1)
        while (op := self.take(*_LEVELS[level])) is not None:
            left = _apply(_BINARY[op], left, self.binary(level + 1))
        return left

    def unary(self) -> Expr:
        if self.take("!") is not None:
            inner = self.unary()
            return lambda n: int(not inner(n))
        if self.take("(") is not None:
            inner = self.conditional()
            if self.take(")") is None:
                raise ValueError("missing ')'")
            return inner
        if self.at >= len(self.tokens):
            raise ValueError("expression ends early")
        token = self.tokens[self.at]
        self.at += 1
        if token == "n":
            return lambda n: n
        if token.isdigit():
            value = int(token)
            return lambda n: value
        raise ValueError(f"unexpected {token!r}")


@dataclass(frozen=True)
class PluralRule:
    """A parsed ``Plural-Forms`` header: ``nplurals`` and, per form, how many of n = 0..1000
    select it (``msgfmt``'s own sample)."""

    header: str
    nplurals: int
    counts: tuple[int, ...]

    @classmethod
    def parse(cls, header: str) -> PluralRule:
        """Raises ``ValueError`` (with the reason) for a header ``msgfmt`` would refuse."""
        m = re.fullmatch(
            r"\s*nplurals\s*=\s*(\d+)\s*;\s*plural\s*=\s*(.+?)\s*;?\s*", header, re.DOTALL
        )
        if m is None:
            raise ValueError("expected 'nplurals=N; plural=EXPRESSION;'")
        nplurals, expr = int(m.group(1)), _Parser(m.group(2)).parse()
        if not 1 <= nplurals <= 100:
            raise ValueError(f"nplurals={nplurals}")
        counts = [0] * nplurals
        for n in range(1001):
            try:
                form = expr(n)
            except ZeroDivisionError:
                raise ValueError("division by zero") from None
            if not 0 <= form < nplurals:
                raise ValueError(f"plural({n}) = {form} is not below nplurals={nplurals}")
            counts[form] += 1
        return cls(header.strip(), nplurals, tuple(counts))

    def relaxed(self, form: int) -> bool:
        """Whether ``msgstr[form]`` may leave out format directives (it stands for one n)."""
        return self.nplurals > 1 and self.counts[form] <= 1


# ------------------------------------------------------------------ format strings

_C_DIRECTIVE = re.compile(
    r"%(?:(?P<pos>[0-9]+)\$)?[-#0+ 'I]*(?P<width>\*(?:[0-9]+\$)?|[0-9]+)?"
    r"(?:\.(?P<prec>\*(?:[0-9]+\$)?|[0-9]*))?(?P<size>hh|h|ll|l|L|q|j|z|Z|t)?"
    r"(?P<conv>[diouxXeEfFgGaAcsSpnCm%]|<PRI[A-Za-z0-9]+>)"
)
_C_TYPES = {**dict.fromkeys("di", "int"), **dict.fromkeys("ouxX", "unsigned")}
_C_TYPES |= dict.fromkeys("eEfFgGaA", "double")
_PY_DIRECTIVE = re.compile(
    r"%(?:\((?P<name>[^)]*)\))?[-#0 +]*(?P<width>\*|[0-9]+)?(?:\.(?P<prec>\*|[0-9]+))?[hlL]?"
    r"(?P<conv>[diouxXeEfFgGcrsa%])"
)
_PY_TYPES = {**dict.fromkeys("diouxX", "int"), **dict.fromkeys("eEfFgG", "float")}
_PY_TYPES |= dict.fromkeys("rsa", "any")
_GENERIC = re.compile(r"%%|%\S|\{[^{}\s]*\}|\$\{?\w+\}?|~\w")
Spec = dict[str, str]  # argument (position "1", "2", ... or name) -> its type


def _c_spec(text: str) -> Spec | None:
    """The arguments of a C format string by position, or ``None`` where it is not one."""
    numbered: list[tuple[int, str]] = []
    unnumbered: list[str] = []
    at = text.find("%")
    while at >= 0:
        m = _C_DIRECTIVE.match(text, at)
        if m is None:
            return None
        conv = m.group("conv")
        for star in (m.group("width"), m.group("prec")):
            if star and star.startswith("*"):
                if star == "*":
                    unnumbered.append("int")
                else:
                    numbered.append((int(star[1:-1]), "int"))
        if conv not in "%m":
            kind = (m.group("size") or "") + _C_TYPES.get(conv, conv)
            if m.group("pos"):
                numbered.append((int(m.group("pos")), kind))
            else:
                unnumbered.append(kind)
        at = text.find("%", m.end())
    if numbered and unnumbered:
        return None
    if not numbered:
        return {str(i): kind for i, kind in enumerate(unnumbered, start=1)}
    by_position: dict[int, str] = {}
    for pos, kind in numbered:
        if by_position.setdefault(pos, kind) != kind:
            return None
    if sorted(by_position) != list(range(1, len(by_position) + 1)):
        return None  # msgfmt: "refers to argument 2 but ignores argument 1"
    return {str(pos): kind for pos, kind in by_position.items()}


def _python_spec(text: str) -> Spec | None:
    named: Spec = {}
    unnamed: list[str] = []
    at = text.find("%")
    while at >= 0:
        m = _PY_DIRECTIVE.match(text, at)
        if m is None:
            return None
        conv, name = m.group("conv"), m.group("name")
        if conv != "%":
            kind = _PY_TYPES.get(conv, conv)
            if name is not None:
                if (
                    "*" in (m.group("width"), m.group("prec"))
                    or named.setdefault(name, kind) != kind
                ):
                    return None
            else:
                unnamed += ["int"] * [m.group("width"), m.group("prec")].count("*") + [kind]
        at = text.find("%", m.end())
    if named and unnamed:
        return None
    return named or {str(i): kind for i, kind in enumerate(unnamed, start=1)}


def _brace_spec(text: str) -> Spec | None:
    spec: Spec = {}
    auto = 0
    try:
        for _, field, _, _ in string.Formatter().parse(text):
            if field is None:
                continue
            name = re.split(r"[.\[]", field, maxsplit=1)[0]
            if not name:
                auto += 1
                name = str(auto - 1)
            spec[name] = "any"
    except ValueError:
        return None
    return spec


_SPECS: dict[str, Callable[[str], Spec | None]] = {
    "c-format": _c_spec,
    "python-format": _python_spec,
    "python-brace-format": _brace_spec,
}


def format_flags(flags: Sequence[str]) -> list[str]:
    """The format languages an entry's flags claim (``c-format``, ...; not ``no-c-format``
    nor ``possible-c-format``)."""
    return [f for f in flags if f.endswith("-format") and not f.startswith(("no-", "possible-"))]


def format_ok(
    flags: Sequence[str], reference: str, translation: str, relaxed: bool = False
) -> bool:
    """Whether ``translation`` is a valid format string of every format language in
    ``flags`` with the arguments of ``reference``; ``relaxed``: it may leave some out (a plural
    form that stands for one n)."""
    for flag in format_flags(flags):
        parse = _SPECS.get(flag)
        ref = parse(reference) if parse else None
        if parse is None or ref is None:  # a language without a parser here, or a bad msgid
            want, got = Counter(_GENERIC.findall(reference)), Counter(_GENERIC.findall(translation))
            if not (got <= want if relaxed else got == want):
                return False
            continue
        spec = parse(translation)
        if spec is None:
            return False
        if relaxed:
            if any(ref.get(k) != v for k, v in spec.items()):
                return False
        elif spec != ref:
            return False
    return True


def positional(source: str, masked: Masked, translation: str) -> Masked:
    """``masked`` (``source`` with its placeables masked, :func:`data.placeables.mask`) with
    its C format directives numbered (``%s`` -> ``%2$s``) when the masked ``translation`` has
    them in another order; unchanged where that cannot be done (a ``*`` width, directives
    already numbered or left unmasked, a sentinel lost or repeated)."""
    parts = [p for p in find(source) if p.kind != "accelerator"]
    directives: dict[int, int] = {}  # sentinel number -> argument position
    arg = 0
    at = source.find("%")
    while at >= 0:
        m = _C_DIRECTIVE.match(source, at)
        if m is None or m.group("pos") or "*" in (m.group("width") or "") + (m.group("prec") or ""):
            return masked
        if m.group("conv") not in "%m":
            arg += 1
            k = next((i for i, p in enumerate(parts) if p.start == at and p.text == m.group()), -1)
            if k < 0:
                return masked
            directives[k + 1] = arg
        at = source.find("%", m.end())
    order = [int(x) for x in re.findall(r"\{([0-9]+)\}", translation) if int(x) in directives]
    if sorted(order) != sorted(directives) or order == sorted(order):
        return masked
    originals = list(masked.originals)
    for k, pos in directives.items():
        originals[k - 1] = f"%{pos}${originals[k - 1][1:]}"
    return Masked(masked.text, tuple(originals), masked.accelerator, masked.accelerated)


def is_c_format(text: str) -> bool:
    """Whether ``xgettext`` would flag ``text`` (from C source) ``c-format``: a valid C format
    string with at least one directive."""
    return "%" in text and _c_spec(text) is not None
