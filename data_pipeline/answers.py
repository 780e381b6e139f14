"""The one answer extractor of the repository: rejection sampling and evaluation both call it.

`extract_answer(text, options)` returns the option letter a response commits to, or None. It prefers
returning None to guessing: when the final statement names two different options, when the letter is not an
option, or when nothing parseable is there.

Where it looks, in priority order (the first form present decides):
1. the last `\\boxed{...}` (`\\boxed{C}`, `\\boxed{C. text}`, `\\boxed{\\text{C}}`, `\\boxed{option text}`);
   `\\boxed{A} or \\boxed{C}` gives None,
2. the last `<answer>...</answer>`,
3. the last explicit answer statement: a phrase before the answer ("answer is", "Answer:", "Final answer: (C)",
   "the correct option is", "答案是", "故选") or after it ("C) text is the correct answer", "Option C is
   correct"); a conditional one ("if ..., the answer would be A") is passed over,
4. the last diagnosis or next-step phrase ("The most likely diagnosis is B) text", "Final diagnosis: text"),
   where only a marked letter ("B)", "(B)", "B.", "B" ending the clause) or an option text counts, so the
   article in "is A combination of ..." is not read as option A,
5. the final non-empty line, if it is only a letter ("C", "(C)", "**C**") or a letter with exactly its option
   text ("C. text"), or exactly an option text.

The text is NFKC-normalized first (full-width "（Ｃ）" and "：" become "(C)" and ":").

With `<think>...</think>`, only what follows `</think>` is read (the reasoning weighs options that are not the
answer); when nothing follows it, the reasoning itself is read.

Inside a boxed / tagged / phrased answer, in order: an option text (exact, else the longest option text the
answer starts with, so "acute myocardial infarction" beats "myocardial infarction"), then a leading letter
("C", "(C)", "c)", "C: text"). "not A but C" reads C. A leading letter whose following text is exactly another
option's text, "A or C" / "A and C" / "A或C", or a second letter offered right after it ("C (or possibly B)",
"A - no, wait, C") gives None.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from collections.abc import Mapping

# A parse outcome: a letter, _STOP (the answer is there but unusable: ambiguous or not an option; do not
# fall back to weaker forms), or None (nothing there; try the next form).
_STOP = ""

# A letter is "alone" when no ASCII word character follows it; CJK text may follow ("答案是C因为...").
_ALONE = r"(?![A-Za-z0-9_'’-])"
_LATEX_WRAPPER = re.compile(r"\\(?:text|textbf|textit|mathrm|mathbf|mathit|mbox|operatorname)\s*\{([^{}]*)\}")
_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")
_BOX_JOINER = re.compile(r"^[\s$,/&]*(?:or|and|或|和)?[\s$,/&]*$", re.IGNORECASE)
_ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.IGNORECASE | re.DOTALL)
# A phrase the answer follows; the verb group is named so that a conditional "would be" can be told apart.
_PHRASE = re.compile(
    r"(?:\b(?:final|correct|best|right|most\s+likely|most\s+appropriate)\s+)?\banswer\b\s*"
    r"(?:(?P<verb>is\b|would\s+be|should\s+be|will\s+be|could\s+be)|=|:|-(?!\w))\s*:?"
    r"|\b(?:correct|best|right)\s+(?:option|choice)\s*(?:is\b|would\s+be|:|=)\s*:?"
    r"|答案\s*(?:是|为|:)|正确选项\s*(?:是|为|:)|故选|应选",
    re.IGNORECASE,
)
# A phrase the answer precedes: "C) text is the correct answer", "Option C is correct".
_PHRASE_AFTER = re.compile(
    r"\s+is\s+(?:(?:the|my)\s+)?(?:(?:correct|right|best|final|most\s+likely|most\s+appropriate)\s+)?"
    r"(?:answer|option|choice|diagnosis)\b(?!\s+(?:only\s+)?(?:if|when|unless)\b)"
    r"|\s+is\s+(?:the\s+)?(?:correct|right)\s*(?=[.!]|$)",
    re.IGNORECASE | re.MULTILINE,
)
# Weaker: a diagnosis or management statement ("The most likely diagnosis is", "Final diagnosis:").
_WEAK_PHRASE = re.compile(
    r"\b(?:(?:most\s+(?:likely|appropriate|probable)|best|correct|right|final)(?:\s+[\w-]+){0,5}?|diagnosis)"
    r"(?:\s+is\b|\s*:)\s*:?",
    re.IGNORECASE,
)
# A hypothetical: "if"/"unless" in the sentence, or an inverted "Had/Were ..." opening it.
_CONDITION = re.compile(r"\b(?:if|unless)\b|^\W*(?:had|were)\b", re.IGNORECASE)
_FILLER = re.compile(
    r"^(?:(?:therefore|thus|hence|so|clearly|definitely|indeed|most\s+likely|likely|probably|option|choice|letter)\b[\s:,]*"
    r"|选项\s*)+",
    re.IGNORECASE,
)
# "not A but C", "not A (text), but rather C": the answer is what follows "but".
_NOT_BUT = re.compile(r"^not\s+[^,;]*?,?\s+(?:but\s+(?:rather\s+)?|rather\s+)", re.IGNORECASE)
_TWO_LETTERS = re.compile(
    r"^(?:either\s+|both\s+)?[\(\[]?([A-Z])[\)\]]?\s*(?:,|/|&|\bor\b|\band\b|或|和|、)\s*(?:option\s+|choice\s+)?"
    r"[\(\[]?([A-Z])[\)\]]?" + _ALONE
)
# A second letter offered right after the first: "C (or possibly B)", "A, or perhaps C", "A - no, wait, C".
_ALTERNATIVE = re.compile(
    r"^[\s,;:()\[\]—–-]*(?:no\b[\s,;:—–-]*)?(?:or|wait)\b[\s,;:—–-]*"
    r"(?:(?:possibly|perhaps|maybe|else|even|no)\b[\s,;:—–-]*)*(?:option\s+|choice\s+)?[\(\[]?([A-Z])" + _ALONE
)
# A leading letter: uppercase when not glued to a word ("C", "C.", "(C)", "C because"), lowercase only when
# it cannot be the article "a" ("c", "(c)", "c.", "c)", "c:").
_LEAD_UPPER = re.compile(r"^[\(\[]?([A-Z])[\)\]]?" + _ALONE)
_LEAD_LOWER = re.compile(r"^(?:[\(\[]([a-z])[\)\]]|([a-z])(?:[.):]|$))")
# A marked letter, for the weaker phrases: "(B)", "B)", or "B" ending its clause ("B.", "B:", "B,", "B").
_LEAD_MARKED = re.compile(r"^(?:[\(\[]([A-Za-z])[\)\]]|([A-Za-z])\)|([A-Z])(?=[.,;:]|\s*$))")
# The final line alone: nothing but a letter, optionally followed by ". option text".
_LINE_LETTER = re.compile(r"^(?:(?:option|choice|answer)\s*:?\s*)?[\(\[]?([A-Za-z])[\)\]]?\s*(?:[.:)\-]\s*(.*))?$")
# How far a statement is read around its phrase: bounds the work per phrase, so a long trace scans in linear
# time (an answer with its option text is far shorter).
_WINDOW = 1000
_SENTENCE_END = re.compile(r"(?<=[^A-Z\s])[.;!?](?:\s|$)|。|\n")


def normalize(text: str) -> str:
    """Lowercase, punctuation to spaces, whitespace collapsed: how option texts are compared."""
    return re.sub(r"[\W_]+", " ", text.lower()).strip()


@functools.lru_cache(maxsize=4096)  # option texts are compared once per candidate
def _norm(text: str) -> str:
    """`normalize` after NFKC, so a full-width option text compares equal to its ASCII form."""
    return normalize(unicodedata.normalize("NFKC", text))


def _clean(text: str) -> str:
    """Removes markdown emphasis, list markers, LaTeX text wrappers and math delimiters around an answer."""
    prev = None
    while prev != text:
        prev, text = text, _LATEX_WRAPPER.sub(r"\1", text)
    for token in ("**", "__", "*", "`", "$", "\\(", "\\)", "\\[", "\\]"):
        text = text.replace(token, "")
    text = re.sub(r"^\s*(?:[-•>]|#+)\s+", "", text)
    return text.strip().strip("\"'“”‘’").strip()


def _boxed_contents(text: str) -> list[tuple[int, int, str]]:
    """(start, end, contents) of every `\\boxed{...}`, braces balanced (`\\boxed{\\text{C}}` gives `\\text{C}`)."""
    out = []
    for m in _BOXED.finditer(text):
        depth, i = 1, m.end()
        while i < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        if depth == 0:
            out.append((m.start(), i, text[m.end() : i - 1]))
    return out


def _option_text_match(cand: str, options: Mapping[str, str], *, prefix: bool) -> str | None:
    """The letter whose option text the candidate is (or, with `prefix`, starts with; longest wins)."""
    c = _norm(cand)
    if not c:
        return None
    norms = {k: _norm(v) for k, v in options.items()}
    exact = [k for k, v in norms.items() if v and v == c]
    if exact:
        return exact[0] if len(exact) == 1 else _STOP
    if not prefix:
        return None
    hits = [k for k, v in norms.items() if v and c.startswith(v + " ")]
    if not hits:
        return None
    best = max(len(norms[k]) for k in hits)
    top = [k for k in hits if len(norms[k]) == best]
    if len(top) > 1:
        return _STOP
    rest = c[best:].strip()
    # "aspirin or heparin": the answer names two options.
    for conj in ("or ", "and "):
        if rest.startswith(conj) and any(
            k != top[0] and v and (rest[len(conj) :] + " ").startswith(v + " ") for k, v in norms.items()
        ):
            return _STOP
    # "Hyperkalemia (B)": the text and the letter name different options.
    if len(rest) == 1 and rest.upper() in options and rest.upper() != top[0]:
        return _STOP
    return top[0]


def _check_letter(letter: str, rest: str, options: Mapping[str, str]) -> str | None:
    """A letter, unless it is not an option, its trailing text is exactly a different option's text, or a
    different letter is offered right after it (_STOP); None when the rest makes it conditional ("A if ...")."""
    letter = letter.upper()
    if letter not in options:
        return _STOP
    alternative = _ALTERNATIVE.match(rest)
    if alternative and alternative.group(1) != letter:
        return _STOP
    rest = rest.strip().lstrip(".:)-]").strip()
    if re.match(r"(?:only\s+)?(?:if|unless)\b", rest, re.IGNORECASE):
        return None
    other = _option_text_match(rest, options, prefix=False) if rest else None
    if other and other != letter:
        return _STOP
    return letter


def _parse_answer(cand: str, options: Mapping[str, str], *, marked: bool = False) -> str | None:
    """Parses a boxed / tagged / phrased answer; see the module docstring. With `marked`, a leading letter
    counts only in a marked form (_LEAD_MARKED), for phrases whose object is usually prose."""
    cand = _FILLER.sub("", _clean(cand)).strip()
    cand = _NOT_BUT.sub("", cand, count=1)
    if not cand:
        return None
    two = _TWO_LETTERS.match(cand)
    if two and two.group(1) != two.group(2):
        return _STOP
    first_sentence = _SENTENCE_END.split(cand, maxsplit=1)[0]
    for piece in (cand, first_sentence):
        hit = _option_text_match(piece, options, prefix=False)
        if hit is not None:
            return hit
    hit = _option_text_match(first_sentence, options, prefix=True)
    if hit is not None:
        return hit
    m = _LEAD_MARKED.match(cand) if marked else _LEAD_UPPER.match(cand) or _LEAD_LOWER.match(cand)
    if m:
        letter = next(g for g in m.groups() if g)
        return _check_letter(letter, first_sentence[m.end() :], options)
    return None


def _parse_bare(line: str, options: Mapping[str, str]) -> str | None:
    """Text that must be nothing but the answer: a letter, a letter with exactly its option text, or exactly an
    option text (the final line; what precedes "is the correct answer")."""
    line = _FILLER.sub("", _clean(line)).rstrip(".").strip()
    hit = _option_text_match(line, options, prefix=False)
    if hit is not None:
        return hit
    m = _LINE_LETTER.match(line)
    if not m:
        return None
    letter, rest = m.group(1), m.group(2) or ""
    if letter.islower() and rest and not line.startswith(("(", "[")) and line[1:2] == " ":
        return None  # "a good choice" is prose
    if rest and _option_text_match(rest, options, prefix=False) is None:
        return None  # "C. This is because ..." or "D) text: no rub" is not a bare answer
    return _check_letter(letter, rest, options)


def _answer_region(text: str) -> str:
    """What follows the last `</think>`, or the reasoning itself when nothing follows it."""
    if "</think>" in text:
        before, after = text.rsplit("</think>", 1)
        return after if after.strip() else before.replace("<think>", "")
    return text.replace("<think>", "")


def _sentence_before(text: str, end: int) -> str:
    """The part of the sentence containing position `end` that precedes it (within _WINDOW characters)."""
    return _SENTENCE_END.split(text[max(text.rfind("\n", 0, end) + 1, end - _WINDOW) : end])[-1]


def _last_boxed(region: str, options: Mapping[str, str]) -> str | None:
    """The last boxed answer; _STOP when the last two boxes are joined ("\\boxed{A} or \\boxed{C}") and differ."""
    boxes = _boxed_contents(region)
    if not boxes:
        return None
    last = _parse_answer(boxes[-1][2], options)
    if len(boxes) > 1 and last and _BOX_JOINER.match(region[boxes[-2][1] : boxes[-1][0]]):
        previous = _parse_answer(boxes[-2][2], options)
        if previous and previous != last:
            return _STOP
    return last


def _statements(plain: str, options: Mapping[str, str]) -> str | None:
    """The last explicit answer statement that states something (stage 3 of the module docstring)."""
    found = []
    for m in _PHRASE.finditer(plain):
        verb = (m.group("verb") or "is").lower()
        if not verb.startswith("is") and _CONDITION.search(
            _sentence_before(plain, m.start()) + " " + _SENTENCE_END.split(_following_line(plain, m.end()), 1)[0]
        ):
            continue  # "if the patient had U waves, the answer would be A"
        found.append((m.start(), "before", m.end()))
    found += [(m.start(), "after", m.start()) for m in _PHRASE_AFTER.finditer(plain)]
    for _, kind, at in sorted(found, reverse=True):
        if kind == "after":
            before = _sentence_before(plain, at)
            result = _parse_bare(before, options)
            if result is None and "," in before:
                result = _parse_bare(before.rsplit(",", 1)[1], options)
        else:
            result = _parse_answer(_following_line(plain, at), options)
        if result is not None:
            return result
    return None


def _weak_statements(plain: str, options: Mapping[str, str]) -> str | None:
    """The last diagnosis or next-step statement that names a marked letter or an option text (stage 4)."""
    for m in reversed(list(_WEAK_PHRASE.finditer(plain))):
        result = _parse_answer(_following_line(plain, m.end()), options, marked=True)
        if result is not None:
            return result
    return None


def _following_line(text: str, start: int) -> str:
    """The rest of the line from `start`, or the next non-empty line ("The answer is:\\n\\nD. text"); at most
    _WINDOW characters of it."""
    end = text.find("\n", start)
    while not text[start : end if end >= 0 else None].strip() and end >= 0:
        start, end = end + 1, text.find("\n", end + 1)
    return text[start : end if end >= 0 else None][:_WINDOW]


def extract_answer(text: str, options: Mapping[str, str]) -> str | None:
    """The option letter `text` commits to, or None.

    Args:
      text: a model or teacher response.
      options: letter -> option text (the letters the question offers).

    Returns:
      An uppercase letter that is a key of `options`, or None when there is no answer, the answer is not
      an option, or the final answer names two different options.
    """
    if not text or not options:
        return None
    region = _answer_region(unicodedata.normalize("NFKC", text))
    plain = region.replace("**", "")
    tags = _ANSWER_TAG.findall(region)
    lines = [ln for ln in region.strip().split("\n") if ln.strip()]
    stages = (
        lambda: _last_boxed(region, options),
        lambda: _parse_answer(tags[-1], options) if tags else None,
        lambda: _statements(plain, options),
        lambda: _weak_statements(plain, options),
        lambda: _parse_bare(lines[-1], options) if lines else None,
    )
    for stage in stages:
        result = stage()
        if result is not None:
            return result or None
    return None


def is_correct(text: str, options: Mapping[str, str], answer_letter: str) -> bool:
    """True when `text`'s extracted answer is `answer_letter` (case-insensitive)."""
    return extract_answer(text, options) == answer_letter.strip().upper()
