"""Who is acting: the principal on whose behalf library calls run.

A principal is an opaque name (``"alice@acme.com"``, ``"svc-billing"``, a dashboard
token's owner). It reaches the extension points without being passed through every
call:

* ``with acting_as("alice@acme.com"): ...`` sets it for the code inside the block (and
  the tasks that block creates: it is a ``contextvars`` variable, so concurrent requests
  of a web server each see their own);
* a queue may carry a default (``QueueContext.principal``), used when no block is active.

``acting_context()`` is the ``acting_as`` principal alone (a request's, where a
component's own ``principal`` is code-level identity); ``not_acting()`` runs a block
with none.

The admin choke point stamps it on every ``AdminCall`` (``AdminCall.principal``), so a
guard can refuse a command and an audit subscriber can record who ran it; enqueue
middleware reads it with ``current_principal()``. The core only carries the name: what a
principal may do is decided by whichever guard a feature installs.

Look-alike names. A principal (and a tenant id, ``features/tenancy``) must be in Unicode
NFKC form, and its letters must keep to one script the way Unicode's "moderately
restrictive" profile allows (UTS #39 section 5.2, ``script_mix``): ``\u0430cme`` with a
Cyrillic "\u0430" next to Latin ``cme`` reads as ``acme`` and is refused; all-Cyrillic,
all-Greek or all-Han names, digits and punctuation with any script, Latin with one other
recommended script except Cyrillic and Greek, and Han with Hiragana / Katakana, Hangul or
Bopomofo are kept. A name stored before the rule (a grant's principal) can still be
read, listed (flagged) and revoked: ``check_principal(name, existing=True)``.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from functools import lru_cache

from .errors import ConfigurationError
from .limits import clip

__all__ = [
    "MAX_PRINCIPAL_LEN",
    "acting_as",
    "acting_context",
    "check_principal",
    "check_scripts",
    "current_principal",
    "format_char",
    "not_acting",
    "script_mix",
]

#: Longest principal name accepted.
MAX_PRINCIPAL_LEN = 256

_acting: ContextVar[str | None] = ContextVar("kq_acting_principal", default=None)


# ---------------------------------------------------------------------- scripts
# The script of a letter is the first word of its Unicode name (``CYRILLIC SMALL LETTER
# A``), two words for the scripts named so (``OLD ITALIC``), with the aliases below;
# words that name no script (``DIGIT``, ``COMBINING``, ``MODIFIER``...) are Common: such
# characters go with any script, as UTS #39's Common and Inherited do.
_TWO_WORDS = frozenset({"OLD", "NEW", "TAI", "LINEAR", "INSCRIPTIONAL"})
_ALIASES = {
    "CJK": "HAN",
    "IDEOGRAPHIC": "HAN",
    "HANGZHOU": "HAN",
    "VIETNAMESE": "HAN",
    "HENTAIGANA": "HIRAGANA",
    "ARABIC-INDIC": "ARABIC",
    "EXTENDED": "ARABIC",  # EXTENDED ARABIC-INDIC DIGIT
    "TURNED": "LATIN",  # TURNED CAPITAL F / SMALL F
}
_COMMON = frozenset(
    {
        "",
        "CARON",
        "CIRCLED",
        "COMBINING",
        "COUNTING",
        "DIGIT",
        "DINGBAT",
        "DOUBLE",
        "INDIC",
        "MASU",
        "MAYAN",
        "MODIFIER",
        "MUSICAL",
        "NEGATIVE",
        "NORTH",
        "ROMAN",
        "TALLY",
        "VARIATION",
        "VEDIC",
        "VERTICAL",
        "ZNAMENNY",
    }
)
#: Unnamed in some Python versions' Unicode data: (first, last, script).
_UNNAMED = ((0x17000, 0x18AFF, "TANGUT"), (0x18D00, 0x18D7F, "TANGUT"))
#: UAX #31's recommended scripts (Table 5): Latin may go with one of them, except
#: Cyrillic and Greek (moderately restrictive).
_RECOMMENDED_NAMES = (
    "ARABIC ARMENIAN BENGALI BOPOMOFO CYRILLIC DEVANAGARI ETHIOPIC GEORGIAN GREEK GUJARATI "
    "GURMUKHI HAN HANGUL HEBREW HIRAGANA KANNADA KATAKANA KHMER LAO LATIN MALAYALAM MYANMAR "
    "ORIYA SINHALA TAMIL TELUGU THAANA THAI TIBETAN"
)
_RECOMMENDED = frozenset(_RECOMMENDED_NAMES.split())
#: Sets of scripts one name may mix (UTS #39 highly restrictive, Latin aside).
_CJK = (
    frozenset({"HAN", "HIRAGANA", "KATAKANA"}),
    frozenset({"HAN", "HANGUL"}),
    frozenset({"HAN", "BOPOMOFO"}),
)


@lru_cache(maxsize=4096)
def _scripts_of(ch: str) -> frozenset[str]:
    """The scripts of one character (empty: Common, it goes with any script)."""
    norm = unicodedata.normalize("NFKC", ch)
    if norm != ch:  # a full-width or superscript letter: the script of what it reads as
        return frozenset().union(*(_scripts_of(c) for c in norm if c != ch))
    if unicodedata.category(ch)[0] not in "LMN":
        return frozenset()
    name = unicodedata.name(ch, "")
    if not name:
        code = ord(ch)
        return frozenset(s for lo, hi, s in _UNNAMED if lo <= code <= hi)
    words = name.split(" ")
    if words[0] == "KATAKANA-HIRAGANA":  # the prolonged sound mark
        return frozenset({"HIRAGANA", "KATAKANA"})
    if words[0] in _COMMON:
        return frozenset()
    if words[0] in _TWO_WORDS and len(words) > 1:
        return frozenset({f"{words[0]} {words[1]}"})
    return frozenset({_ALIASES.get(words[0], words[0])})


def _allowed(scripts: frozenset[str]) -> bool:
    """Whether one name may mix ``scripts`` (UTS #39 5.2, moderately restrictive)."""
    if len(scripts) <= 1:
        return True
    rest = scripts - {"LATIN"}
    if any(rest <= cjk for cjk in _CJK):
        return True
    (other,) = rest if len(rest) == 1 and "LATIN" in scripts else ("",)
    return other in _RECOMMENDED and other not in ("CYRILLIC", "GREEK")


def _shown(script: str) -> str:
    return script.title()


def script_mix(text: str) -> str | None:
    """None when the letters of ``text`` keep to one script as Unicode's "moderately
    restrictive" profile allows (UTS #39 section 5.2); else what is mixed, e.g. ``mixes
    the Cyrillic and Latin scripts (U+0430 CYRILLIC SMALL LETTER A at position 0)``.

    Digits, punctuation, symbols and combining marks go with any script. Allowed
    mixtures: Latin with one other recommended script except Cyrillic and Greek (``svc-`` +
    Arabic), and Han with Hiragana and Katakana, with Hangul, or with Bopomofo (Latin
    may join those). The characters named are those outside the script most letters are
    in (five at most).
    """
    if text.isascii():
        return None
    per = [(i, ch, _scripts_of(ch)) for i, ch in enumerate(text)]
    found: dict[str, int] = {}
    for _, _, scripts in per:
        for s in scripts:
            found[s] = found.get(s, 0) + 1
    if _allowed(frozenset(found)):
        return None
    # The script most letters are in (Latin first on a tie): the others are at fault.
    main = max(found, key=lambda s: (found[s], s == "LATIN", s))
    culprits = [
        f"U+{ord(ch):04X} {unicodedata.name(ch, 'UNNAMED')} at position {i}"
        for i, ch, scripts in per
        if scripts and main not in scripts
    ]
    more = f" and {len(culprits) - 5} more" if len(culprits) > 5 else ""
    names = sorted(_shown(s) for s in found)
    return (
        f"mixes the {', '.join(names[:-1])} and {names[-1]} scripts "
        f"({', '.join(culprits[:5])}{more})"
    )


#: What goes with any script in a principal's name (``check_scripts``' ``neutral``).
_PRINCIPAL_NEUTRAL = "digits, spaces, punctuation and symbols"


def check_scripts(text: str, what: str, *, neutral: str = _PRINCIPAL_NEUTRAL) -> str:
    """``text``, or ``ConfigurationError`` when its letters mix scripts (``script_mix``):
    the scripts, the characters at fault and what to do. ``neutral``: what else the kind
    of name being checked may hold, which goes with any script (a tenant id's digits
    and separators, ``features/tenancy``; a principal's digits, spaces, punctuation and
    symbols)."""
    mix = script_mix(text)
    if mix is not None:
        raise ConfigurationError(
            f"{what} {clip(ascii(text), 160)} {mix}: people would read it as another "
            f"name. Spell it in one script ({neutral} go with any script; Latin may go "
            "with one other script except Cyrillic and Greek; Han with Hiragana and "
            "Katakana, with Hangul or with Bopomofo)"
        )
    return text


def format_char(text: str) -> str | None:
    """None when ``text`` holds no control (C0, C1), format (zero-width, bidirectional)
    or lone surrogate code point; else the first one, as ``U+202E``. Such a character
    makes a name the audit log and UIs cannot tell apart from another (principals,
    tenant names)."""
    for ch in text:
        if unicodedata.category(ch) in ("Cc", "Cf", "Cs"):
            return f"U+{ord(ch):04X}"
    return None


def check_principal(principal: object, *, existing: bool = False) -> str:
    """``principal`` if it is a usable name, else ConfigurationError saying why.

    A name is a non-empty ``str`` of at most ``MAX_PRINCIPAL_LEN`` characters with no
    control characters or surrogates (it is written to audit records and shown in UIs),
    in Unicode NFKC form (a look-alike spelling is refused, never normalised), whose
    letters do not mix scripts (``script_mix``: ``\u0430dmin`` with a Cyrillic "\u0430"
    would read as ``admin``).

    ``existing=True`` looks up a name already stored (a grant read, listed, checked or
    revoked): the script rule is not applied, so a name stored before it stays reachable
    (listings flag it: ``AccessEntry.lookalike``).
    """
    if not isinstance(principal, str):
        raise ConfigurationError(
            f"principal must be a str (a user or service name), got {type(principal).__name__}"
        )
    if not principal or principal != principal.strip():
        raise ConfigurationError(
            "principal must be a non-empty name without leading or trailing spaces, "
            f"got {clip(repr(principal), 100)}"
        )
    if len(principal) > MAX_PRINCIPAL_LEN:
        raise ConfigurationError(
            f"principal is {len(principal)} characters; the limit is {MAX_PRINCIPAL_LEN}"
        )
    # Control (C0, C1), format (zero-width, bidirectional) and surrogate code points:
    # the audit log could not record such a name apart from a look-alike.
    bad = format_char(principal)
    if bad is not None:
        raise ConfigurationError(
            f"principal {clip(repr(principal), 100)} contains a control or format "
            f"character or a lone surrogate ({bad}); use printable text"
        )
    # One spelling per name: a decomposed accent or a full-width letter would make a
    # second principal that looks like the first (and is not granted what it is).
    # Refused, not rewritten: two names an identity provider keeps apart stay apart.
    canonical = unicodedata.normalize("NFKC", principal)
    if canonical != principal:
        raise ConfigurationError(
            f"principal {clip(ascii(principal), 100)} is not in Unicode NFKC form (it "
            f"would look like another name); write it as {clip(ascii(canonical), 100)}"
        )
    return principal if existing else check_scripts(principal, "principal")


def current_principal(default: str | None = None) -> str | None:
    """The principal set by the innermost active ``acting_as`` block, else ``default``."""
    acting = _acting.get()
    return acting if acting is not None else default


def acting_context() -> str | None:
    """The principal set by the innermost active ``acting_as`` block only (None outside
    one, or inside ``not_acting``): a principal a request named, as opposed to the
    code-level identity a component was built with."""
    return _acting.get()


@contextmanager
def acting_as(principal: str) -> Iterator[str]:
    """Run the block on behalf of ``principal`` (validated by ``check_principal``).

    Blocks nest; leaving one restores the principal that was acting before it.
    """
    token = _acting.set(check_principal(principal))
    try:
        yield principal
    finally:
        _acting.reset(token)


@contextmanager
def not_acting() -> Iterator[None]:
    """Run the block with no ``acting_as`` principal (``acting_context()`` is None inside
    it): code-level identities (a queue's or a manager's ``principal``) apply again.

    Leaving it restores the principal that was acting before it.
    """
    token = _acting.set(None)
    try:
        yield
    finally:
        _acting.reset(token)
