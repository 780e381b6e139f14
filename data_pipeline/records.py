"""The records that flow through the recipe: questions in, accepted traces out.

Every source adapter yields `Question`s; rejection sampling turns a question and its teacher
completions into `AcceptedTrace`s, which the writer serialises (msgpack) into ArrayRecord shards that
training reads. Records carry `schema_version` so that a shard written by an older layout fails with
a clear message instead of producing a wrong batch.
"""

from __future__ import annotations

import dataclasses
import functools
import string
import unicodedata
from typing import Any, Literal

import msgpack

from data_pipeline.hashing import bytes_digest, content_digest

SCHEMA_VERSION = 1

Category = Literal["text", "mm_reasoning", "mm_classification"]
CATEGORIES: tuple[str, ...] = ("text", "mm_reasoning", "mm_classification")
ResponseFormat = Literal["cot", "direct"]
LETTERS = string.ascii_uppercase
# What `Question.key` looks like (an SQLite GLOB): "<source>/" then 32 hex digits. Completion stores of builds
# before keys covered the content hold "<source>/<release id>" keys instead.
KEY_GLOB = "*/" + "[0-9a-f]" * 32


class BadRecordError(ValueError):
    """A record that cannot be used; `reason` is the short key counted in the manifest."""

    def __init__(self, reason: str, message: str):
        super().__init__(f"{reason}: {message}")
        self.reason = reason


@dataclasses.dataclass(frozen=True)
class ImageRef:
    """One image of a question: encoded bytes with their format, or a path inside the source root."""

    data: bytes | None = None
    format: str | None = None  # "png", "jpeg", ... when `data` is set
    path: str | None = None  # relative to the source root when the bytes were not loaded

    def to_dict(self) -> dict[str, Any]:
        return {"data": self.data, "format": self.format, "path": self.path}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ImageRef:
        return cls(data=d.get("data"), format=d.get("format"), path=d.get("path"))


@dataclasses.dataclass(frozen=True)
class Question:
    """A multiple-choice question from any source, in one shape.

    Identity is the content, not the id: `key` hashes the source, text, options and images, so two
    different questions never share a key (nor a stored completion), and exact copies do.

    Attributes:
      id: the release's id (the adapter makes it stable across runs); for reports, not identity: real
        releases repeat ids.
      source: adapter name, e.g. "medqa".
      category: "text", "mm_reasoning" or "mm_classification".
      question: the stem, without the options.
      options: letter -> option text, letters in order from "A".
      answer: the correct letter, a key of `options`.
      images: images referenced by the question, in order.
      split: "train", "validation", "test", ...
      metadata: free-form strings (modality, body part, language, ...).
    """

    id: str
    source: str
    category: str
    question: str
    options: dict[str, str]
    answer: str
    images: tuple[ImageRef, ...] = ()
    split: str = "train"
    metadata: dict[str, str] = dataclasses.field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION

    @functools.cached_property
    def key(self) -> str:
        """The question's identity: "<source>/" + 32 hex digits of its content.

        Hashed: the source, the stem and the option texts in order (Unicode NFC, whitespace collapsed: a copy
        that differs only in spacing is the same question), and each image's encoded bytes in order (no
        decoding; a path-only image: its path, so keys are compared between reads that load the bytes). Not
        hashed: the answer (equal content with another answer is a conflict, not another question), the id,
        split and metadata. Computed once per instance (images can be large): copy a question with
        `dataclasses.replace`, not through its `__dict__` (which then holds the cached key).
        """
        images = [bytes_digest(im.data) if im.data else f"path:{im.path}" for im in self.images]
        content = [self.source, _norm(self.question), [_norm(t) for t in self.options.values()], images]
        return f"{self.source}/{content_digest(content)}"

    @property
    def label(self) -> str:
        """"<source>/<release id>": how reports and errors name the question (not unique)."""
        return f"{self.source}/{self.id}"

    def validate(self) -> Question:
        """Raises BadRecordError naming what is wrong; returns self so adapters can chain it."""
        if not self.question or not self.question.strip():
            raise BadRecordError("empty_question", f"{self.label} has an empty question")
        if self.category not in CATEGORIES:
            raise BadRecordError("bad_category", f"{self.label} has category {self.category!r}")
        if len(self.options) < 2:
            raise BadRecordError("too_few_options", f"{self.label} has {len(self.options)} options")
        expected = list(LETTERS[: len(self.options)])
        if list(self.options) != expected:
            raise BadRecordError("bad_option_letters", f"{self.label} options {list(self.options)} != {expected}")
        if any(not str(t).strip() for t in self.options.values()):
            raise BadRecordError("empty_option", f"{self.label} has an empty option")
        if self.answer not in self.options:
            raise BadRecordError(
                "answer_not_in_options", f"{self.label} answer {self.answer!r} not among {list(self.options)}"
            )
        return self

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["images"] = [im.to_dict() for im in self.images]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Question:
        check_schema(d, "Question")
        d = dict(d)
        d["images"] = tuple(ImageRef.from_dict(im) for im in d.get("images", ()))
        d["options"] = dict(d["options"])
        d["metadata"] = dict(d.get("metadata") or {})
        return cls(**d)


@dataclasses.dataclass(frozen=True)
class AcceptedTrace:
    """One training example: a question and one accepted teacher response, formatted for SFT.

    Attributes:
      question: the question (its images embedded as bytes).
      response: the assistant target text, already formatted (CoT or direct) by `formats`.
      format: "cot" or "direct".
      teacher: the teacher's name.
      sample_index: which of the n teacher samples this trace came from.
    """

    question: Question
    response: str
    format: str
    teacher: str
    sample_index: int
    schema_version: int = SCHEMA_VERSION

    def to_bytes(self) -> bytes:
        d = {
            "question": self.question.to_dict(),
            "response": self.response,
            "format": self.format,
            "teacher": self.teacher,
            "sample_index": self.sample_index,
            "schema_version": self.schema_version,
        }
        return msgpack.packb(d, use_bin_type=True)

    @classmethod
    def from_bytes(cls, data: bytes) -> AcceptedTrace:
        try:
            d = msgpack.unpackb(data, raw=False)
        except Exception as e:  # msgpack raises several unrelated types
            raise BadRecordError("corrupt_record", f"cannot decode record: {e}") from e
        check_schema(d, "AcceptedTrace")
        d["question"] = Question.from_dict(d["question"])
        return cls(**d)


def _norm(text: str) -> str:
    return " ".join(unicodedata.normalize("NFC", str(text)).split())


def check_schema(d: dict[str, Any], kind: str) -> None:
    """Fails clearly on records written by another schema version."""
    version = d.get("schema_version") if isinstance(d, dict) else None
    if version != SCHEMA_VERSION:
        raise BadRecordError(
            "schema_version",
            f"{kind} has schema_version {version}, this code reads {SCHEMA_VERSION}; rebuild the shards "
            "with `python -m data_pipeline.build`",
        )
