"""A small language guess for filtering: the writing system, then common words.

Texts mostly in a non-Latin script are named by it (e.g. "cyrillic", "han", "arabic").
Latin-script texts are scored by how many of their words are among the ~40 most frequent
words of English, German, French, Spanish, Italian, Portuguese and Dutch; the best-scoring
language wins when at least MIN_HITS of its words occur and it beats the runner-up.
Anything else is "unknown" (too short or not one of these), which the filter keeps unless
told otherwise. No model, no download: good enough to drop the odd other-language prompt
from an English dataset, not a general-purpose identifier.
"""

from __future__ import annotations

import re
import unicodedata

MIN_HITS = 2
UNKNOWN = "unknown"
WORD = re.compile(r"[^\W\d_]+")

STOPWORDS: dict[str, frozenset[str]] = {
    lang: frozenset(words.split())
    for lang, words in {
        "en": "the be to of and a in that have it for not on with he as you do at this but his "
        "by from they we say her she or an will my one all would there their what so up out "
        "if about who get which go me when can is are was how why",
        "de": "der die und in den von zu das mit sich des auf für ist im dem nicht ein eine als "
        "auch es an werden aus er hat dass sie nach wird bei einer um am sind noch wie einem "
        "über einen so zum war haben nur oder aber ich du wir",
        "fr": "le de un à être et en avoir que pour dans ce il qui ne sur se pas plus pouvoir "
        "par je avec tout faire son mettre autre on mais nous comme ou si leur y dire elle "
        "la les des est une du au vous quel quelle",
        "es": "el la de que y en un ser se no haber por con su para como estar tener le lo "
        "todo pero más hacer o poder decir este ir otro ese si me ya ver porque dar cuando "
        "muy sin los las es una del al",
        "it": "il di che e la un a per in è non una sono mi si ho lo ma ha le cosa con ti se "
        "da come io questo qui bene gli del della anche più ci sei perché sua tu nel",
        "pt": "o de a e que do da em um para é com não uma os no se na por mais as dos como "
        "mas foi ao ele das tem à seu sua ou ser quando muito há nos já está eu também só",
        "nl": "de en van ik te dat die in een hij het niet zijn is was op aan met als voor "
        "had er maar om hem dan zou of wat mijn men dit zo door over ze zich bij ook tot je",
    }.items()
}


def _script(char: str) -> str:
    name = unicodedata.name(char, "")
    for script in (
        "LATIN",
        "CYRILLIC",
        "GREEK",
        "ARABIC",
        "HEBREW",
        "DEVANAGARI",
        "HANGUL",
        "HIRAGANA",
        "KATAKANA",
        "THAI",
    ):
        if name.startswith(script):
            return script.lower()
    if name.startswith("CJK"):
        return "han"
    return "other"


def detect_language(text: str) -> str:
    """A language code (en, de, ...), a script name for non-Latin text, or "unknown"."""
    letters = [c for c in text[:2000] if c.isalpha()]
    if not letters:
        return UNKNOWN
    scripts: dict[str, int] = {}
    for c in letters:
        script = "latin" if c.isascii() else _script(c)
        scripts[script] = scripts.get(script, 0) + 1
    main = max(scripts, key=lambda s: scripts[s])
    if main != "latin":
        # Japanese mixes kana with han characters: any kana says Japanese.
        if main in ("han", "hiragana", "katakana") and (
            scripts.get("hiragana") or scripts.get("katakana")
        ):
            return "japanese"
        return main if main != "other" else UNKNOWN
    words = WORD.findall(text[:2000].lower())
    scores = sorted(
        ((sum(w in stop for w in words), lang) for lang, stop in STOPWORDS.items()),
        reverse=True,
    )
    (best, lang), (second, _) = scores[0], scores[1]
    if best >= MIN_HITS and best > second:
        return lang
    return UNKNOWN
