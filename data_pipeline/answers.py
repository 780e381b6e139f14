"""The one answer extractor of the repository: rejection sampling and evaluation both call it.

`extract_answer(text, options)` returns the option letter a response commits to, or None. It prefers
returning None to guessing: when the final statement names two different options, when the letter is not an
option, or when nothing parseable is there.

Where it looks, in priority order (the first form present decides):
1. the last `\\boxed{...}` (`\\boxed{C}`, `\\boxed{C. text}`, `\\boxed{\\text{C}}`, `\\boxed{option text}`),
2. the last `<answer>...</answer>`,
3. the last explicit answer phrase ("answer is", "Answer:", "Final answer: (C)", "the correct option is"),
4. the final non-empty line, if it is only a letter ("C", "(C)", "**C**", "C. text") or exactly an option text.

With `<think>...</think>`, only what follows `</think>` is read (the reasoning weighs options that are not the
answer); when nothing follows it, the reasoning itself is read.

Inside a boxed / tagged / phrased answer, in order: an option text (exact, else the longest option text the
answer starts with, so "acute myocardial infarction" beats "myocardial infarction"), then a leading letter
("C", "(C)", "c)", "C: text"). A leading letter whose following text is exactly another option's text, or
"A or C" / "A and C", gives None.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

# A parse outcome: a letter, _STOP (the answer is there but unusable: ambiguous or not an option; do not
# fall back to weaker forms), or None (nothing there; try the next form).
_STOP = ""

_LATEX_WRAPPER = re.compile(r"\\(?:text|textbf|textit|mathrm|mathbf|mathit|mbox|operatorname)\s*\{([^{}]*)\}")
_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")
_ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.IGNORECASE | re.DOTALL)
_PHRASE = re.compile(
    r"(?:\b(?:final|correct|best|right|most\s+likely|most\s+appropriate)\s+)?\banswer\b\s*"
    r"(?:is|would\s+be|should\s+be|will\s+be|=|:|-(?!\w))\s*:?"
    r"|\b(?:correct|best|right)\s+(?:option|choice)\s*(?:is|would\s+be|:|=)\s*:?",
    re.IGNORECASE,
)
_FILLER = re.compile(
    r"^(?:(?:therefore|thus|hence|so|clearly|definitely|indeed|most\s+likely|likely|probably|option|choice|letter)\b[\s:,]*)+",
    re.IGNORECASE,
)
_TWO_LETTERS = re.compile(
    r"^(?:either\s+|both\s+)?[\(\[]?([A-Z])[\)\]]?\s*(?:,|/|&|\bor\b|\band\b)\s*(?:option\s+|choice\s+)?"
    r"[\(\[]?([A-Z])[\)\]]?(?![\w'’-])"
)
# A leading letter: uppercase when not glued to a word ("C", "C.", "(C)", "C because"), lowercase only when
# it cannot be the article "a" ("c", "(c)", "c.", "c)", "c:").
_LEAD_UPPER = re.compile(r"^[\(\[]?([A-Z])[\)\]]?(?![\w'’-])")
_LEAD_LOWER = re.compile(r"^(?:[\(\[]([a-z])[\)\]]|([a-z])(?:[.):]|$))")
# The final line alone: nothing but a letter, optionally followed by ". option text".
_LINE_LETTER = re.compile(r"^(?:(?:option|choice|answer)\s*:?\s*)?[\(\[]?([A-Za-z])[\)\]]?\s*(?:[.:)\-]\s*(.*))?$")


def normalize(text: str) -> str:
    """Lowercase, punctuation to spaces, whitespace collapsed: how option texts are compared."""
    return re.sub(r"[\W_]+", " ", text.lower()).strip()


def _clean(text: str) -> str:
    """Removes markdown emphasis, LaTeX text wrappers and math delimiters around an answer."""
    prev = None
    while prev != text:
        prev, text = text, _LATEX_WRAPPER.sub(r"\1", text)
    for token in ("**", "__", "*", "`", "$", "\\(", "\\)", "\\[", "\\]"):
        text = text.replace(token, "")
    return text.strip().strip("\"'“”‘’").strip()


def _boxed_contents(text: str) -> list[str]:
    """Contents of every `\\boxed{...}`, braces balanced (so `\\boxed{\\text{C}}` gives `\\text{C}`)."""
    out = []
    for m in _BOXED.finditer(text):
        depth, i = 1, m.end()
        while i < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        if depth == 0:
            out.append(text[m.end() : i - 1])
    return out


def _option_text_match(cand: str, options: Mapping[str, str], *, prefix: bool) -> str | None:
    """The letter whose option text the candidate is (or, with `prefix`, starts with; longest wins)."""
    c = normalize(cand)
    if not c:
        return None
    norms = {k: normalize(v) for k, v in options.items()}
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
    return top[0]


def _check_letter(letter: str, rest: str, options: Mapping[str, str]) -> str:
    """A letter, unless it is not an option or its trailing text is exactly a different option's text."""
    letter = letter.upper()
    if letter not in options:
        return _STOP
    rest = rest.strip().lstrip(".:)-]").strip()
    other = _option_text_match(rest, options, prefix=False) if rest else None
    if other and other != letter:
        return _STOP
    return letter


def _parse_answer(cand: str, options: Mapping[str, str]) -> str | None:
    """Parses a boxed / tagged / phrased answer; see the module docstring."""
    cand = _FILLER.sub("", _clean(cand)).strip()
    if not cand:
        return None
    two = _TWO_LETTERS.match(cand)
    if two and two.group(1) != two.group(2):
        return _STOP
    first_sentence = re.split(r"(?<=[^A-Z\s])[.;](?:\s|$)|\n", cand, maxsplit=1)[0]
    for piece in (cand, first_sentence):
        hit = _option_text_match(piece, options, prefix=False)
        if hit is not None:
            return hit
    hit = _option_text_match(first_sentence, options, prefix=True)
    if hit is not None:
        return hit
    m = _LEAD_UPPER.match(cand) or _LEAD_LOWER.match(cand)
    if m:
        letter = next(g for g in m.groups() if g)
        return _check_letter(letter, first_sentence[m.end() :], options)
    return None


def _parse_final_line(line: str, options: Mapping[str, str]) -> str | None:
    """The last line alone counts only if it is nothing but a letter (with its option text) or an option."""
    line = _clean(line).rstrip(".").strip()
    hit = _option_text_match(line, options, prefix=False)
    if hit is not None:
        return hit
    m = _LINE_LETTER.match(line)
    if not m:
        return None
    letter, rest = m.group(1), m.group(2) or ""
    if letter.islower() and rest and not line.startswith(("(", "[")) and line[1:2] == " ":
        return None  # "a good choice" is prose
    if rest and _option_text_match(rest, options, prefix=True) is None:
        return None  # "C. This is because ..." is not a bare answer line
    return _check_letter(letter, rest, options)


def _answer_region(text: str) -> str:
    """What follows the last `</think>`, or the reasoning itself when nothing follows it."""
    if "</think>" in text:
        before, after = text.rsplit("</think>", 1)
        return after if after.strip() else before.replace("<think>", "")
    return text.replace("<think>", "")


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
    region = _answer_region(text)
    stages = (
        [_parse_answer(c, options) for c in reversed(_boxed_contents(region))][:1],
        [_parse_answer(c, options) for c in reversed(_ANSWER_TAG.findall(region))][:1],
    )
    for results in stages:
        if results and results[0] is not None:
            return results[0] or None
    # Explicit phrases: the last one that states something decides.
    plain = region.replace("**", "")
    for m in reversed(list(_PHRASE.finditer(plain))):
        rest = plain[m.end() :]
        line = rest.split("\n", 1)[0]
        if not line.strip():  # "The answer is:\n\nC. ..." -> the next non-empty line
            line = next((ln for ln in rest.split("\n") if ln.strip()), "")
        result = _parse_answer(line, options)
        if result is not None:
            return result or None
    lines = [ln for ln in region.strip().split("\n") if ln.strip()]
    if lines:
        result = _parse_final_line(lines[-1], options)
        if result is not None:
            return result or None
    return None


def is_correct(text: str, options: Mapping[str, str], answer_letter: str) -> bool:
    """True when `text`'s extracted answer is `answer_letter` (case-insensitive)."""
    return extract_answer(text, options) == answer_letter.strip().upper()
