"""Teachers: anything that turns a `Question` into sampled completions, behind one interface.

`OpenAITeacher` talks to any OpenAI-compatible `/chat/completions` endpoint (GPT-4o, DeepSeek-R1 with
its separate `reasoning_content`, a vLLM server, the student used as a filter, an LLM judge). Other
teachers (the demo's synthetic one, registered by its plugin) only need to satisfy the `Teacher` protocol.

`sample_questions` drives any teacher over a stream of questions with a thread pool (the calls are
I/O-bound), writes each response to the `CompletionStore` as it arrives, and asks only for the sample
indices the store lacks, so a killed run restarted with the same arguments requests nothing twice.
"""

from __future__ import annotations

import base64
import collections
import dataclasses
import email.utils
import json
import logging
import os
import random
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent import futures
from typing import Any, Protocol, runtime_checkable

import requests

from data_pipeline.plugins import PLUGIN_HINT
from data_pipeline.records import Question

log = logging.getLogger(__name__)

# Status codes worth retrying: rate limits, request timeouts and server-side failures.
RETRY_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504, 520, 521, 522, 523, 524, 529})

MessageBuilder = Callable[[Question, "TeacherConfig", "str | None"], list[dict[str, Any]]]


class TeacherError(RuntimeError):
    """A request that failed for good (non-retryable status, or retries exhausted)."""


@dataclasses.dataclass(frozen=True)
class Completion:
    """One sampled response, as stored.

    Attributes:
      question_key: `Question.key` of the question it answers.
      teacher: the teacher's name.
      prompt_version: the teacher's prompt version (part of its identity).
      sample_index: which of the n samples (0-based).
      content: the message `content` (the final answer text for R1-style models).
      reasoning_content: DeepSeek-R1 style separate reasoning, None when the endpoint gives none.
      finish_reason: as reported by the endpoint ("stop", "length", ...).
      prompt_tokens: this sample's share of the request's prompt tokens.
      completion_tokens: this sample's share of the request's completion tokens.
    """

    question_key: str
    teacher: str
    prompt_version: str
    sample_index: int
    content: str
    reasoning_content: str | None = None
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0


@runtime_checkable
class Teacher(Protocol):
    """What the pipeline needs from a teacher (or a judge, or the student used as a filter).

    `name` and `prompt_version` together identify the completions in the store: change the prompt,
    bump the version, and old completions are not reused.
    """

    name: str
    prompt_version: str
    max_n_per_request: int
    price_input_per_1m: float
    price_output_per_1m: float

    def sample(self, question: Question, sample_indices: Sequence[int]) -> list[Completion]:
        """Returns completions for (at most) the given sample indices of `question`.

        May return fewer than asked (the caller asks again for what is missing); raises
        `TeacherError` when the request failed for good.
        """
        ...


@dataclasses.dataclass(frozen=True)
class TeacherConfig:
    """One OpenAI-compatible teacher endpoint and its sampling settings.

    The API key is never stored here: only the name of the environment variable that holds it.
    """

    name: str
    base_url: str
    model: str
    api_key_env: str | None = None
    prompt_version: str = "v1"
    system_prompt: str | None = None
    n: int = 16
    max_n_per_request: int = 16  # endpoints that cap `n` (or ignore it) get several requests
    temperature: float = 0.6
    top_p: float = 0.95
    max_tokens: int = 8192
    concurrency: int = 8
    connect_timeout_s: float = 10.0
    read_timeout_s: float = 600.0
    max_retries: int = 8
    backoff_base_s: float = 1.0
    backoff_max_s: float = 60.0
    price_input_per_1m: float = 0.0
    price_output_per_1m: float = 0.0
    extra_body: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    @classmethod
    def from_mapping(cls, d: Mapping[str, Any]) -> TeacherConfig:
        """Builds a config from a dict or ConfigDict, ignoring keys that are not fields."""
        if hasattr(d, "to_dict"):
            d = d.to_dict()
        names = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in dict(d).items() if k in names}
        kwargs["api_key_env"] = kwargs.get("api_key_env") or None  # recipes write "" for "no key"
        if "extra_body" in kwargs:
            kwargs["extra_body"] = dict(kwargs["extra_body"] or {})
        return cls(**kwargs)

    @property
    def identity(self) -> str:
        """Name and prompt version, the key the store uses."""
        return f"{self.name}@{self.prompt_version}"


def image_data_url(data: bytes, fmt: str | None) -> str:
    """Encodes image bytes as a `data:` URL for the `image_url` content part."""
    fmt = (fmt or "png").lower()
    mime = {"jpg": "jpeg", "tif": "tiff"}.get(fmt, fmt)
    return f"data:image/{mime};base64,{base64.b64encode(data).decode('ascii')}"


def _image_bytes(ref: Any, image_root: str | None) -> tuple[bytes, str | None]:
    if ref.data is not None:
        return ref.data, ref.format
    if ref.path is None:
        raise TeacherError("image has neither bytes nor a path")
    if image_root is None:
        raise TeacherError(f"image {ref.path!r} is a path but no image_root was given")
    root = os.path.realpath(image_root)
    full = os.path.realpath(os.path.join(root, ref.path))
    # A path that escapes the source root is refused rather than read.
    if os.path.commonpath([root, full]) != root:
        raise TeacherError(f"image path {ref.path!r} escapes the source root")
    with open(full, "rb") as f:
        data = f.read()
    return data, ref.format or os.path.splitext(full)[1].lstrip(".") or None


def question_messages(question: Question, config: TeacherConfig, image_root: str | None = None) -> list[dict[str, Any]]:
    """Chat messages for a question: optional system prompt, then images and the rendered question."""
    from data_pipeline.formats import render_question  # the one place that renders questions

    messages: list[dict[str, Any]] = []
    if config.system_prompt:
        messages.append({"role": "system", "content": config.system_prompt})
    text = render_question(question)
    if question.images:
        parts: list[dict[str, Any]] = []
        for ref in question.images:
            data, fmt = _image_bytes(ref, image_root)
            parts.append({"type": "image_url", "image_url": {"url": image_data_url(data, fmt)}})
        parts.append({"type": "text", "text": text})
        messages.append({"role": "user", "content": parts})
    else:
        messages.append({"role": "user", "content": text})
    return messages


def _retry_after_s(value: str | None) -> float | None:
    """Parses a Retry-After header: seconds, or an HTTP date."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _split_evenly(total: int, parts: int) -> list[int]:
    """Splits an integer so the shares sum exactly to `total` (the first shares take the remainder)."""
    base, rem = divmod(max(0, int(total)), max(1, parts))
    return [base + (1 if i < rem else 0) for i in range(parts)]


class OpenAITeacher:
    """A teacher behind an OpenAI-compatible chat-completions endpoint.

    Thread-safe: each thread keeps its own `requests.Session`.
    """

    def __init__(
        self,
        config: TeacherConfig,
        *,
        image_root: str | None = None,
        message_builder: MessageBuilder | None = None,
        rng: random.Random | None = None,
    ):
        """Creates the client.

        Args:
          config: endpoint and sampling settings.
          image_root: where image paths of questions are resolved (the source root).
          message_builder: builds the messages of a question; defaults to `question_messages`
            (a judge passes its own prompt here).
          rng: source of backoff jitter (tests pass a seeded one).

        Raises:
          TeacherError: `api_key_env` is set but that environment variable is not.
        """
        self.config = config
        self.name = config.name
        self.prompt_version = config.prompt_version
        self.max_n_per_request = max(1, int(config.max_n_per_request))
        self.price_input_per_1m = float(config.price_input_per_1m)
        self.price_output_per_1m = float(config.price_output_per_1m)
        self._image_root = image_root
        self._build = message_builder or question_messages
        self._rng = rng or random.Random()
        self._rng_lock = threading.Lock()
        self._local = threading.local()
        self._url = config.base_url.rstrip("/") + "/chat/completions"
        if config.api_key_env and not os.environ.get(config.api_key_env):
            raise TeacherError(f"teacher {config.name!r}: environment variable {config.api_key_env} is not set")

    def __repr__(self) -> str:  # the key lives only in the environment; nothing secret to show
        return f"OpenAITeacher(name={self.name!r}, model={self.config.model!r}, url={self._url!r})"

    @property
    def _api_key(self) -> str | None:
        return os.environ.get(self.config.api_key_env) if self.config.api_key_env else None

    def _redact(self, text: str) -> str:
        key = self._api_key
        return text.replace(key, "***") if key else text

    def _session(self) -> requests.Session:
        s = getattr(self._local, "session", None)
        if s is None:
            s = requests.Session()
            self._local.session = s
        return s

    def _backoff_s(self, attempt: int, retry_after: float | None) -> float:
        cap = min(self.config.backoff_max_s, self.config.backoff_base_s * (2**attempt))
        with self._rng_lock:
            delay = cap * (0.5 + 0.5 * self._rng.random())  # jitter spreads out retrying threads
        if retry_after is not None:
            delay = max(delay, min(retry_after, max(self.config.backoff_max_s, 1.0) * 5))
        return delay

    def request_body(self, question: Question, n: int) -> dict[str, Any]:
        """The JSON body of one request for `n` samples of `question`."""
        body: dict[str, Any] = {
            "model": self.config.model,
            "messages": self._build(question, self.config, self._image_root),
            "n": n,
            "temperature": self.config.temperature,
            "top_p": self.config.top_p,
            "max_tokens": self.config.max_tokens,
        }
        body.update(dict(self.config.extra_body))
        return body

    def sample(self, question: Question, sample_indices: Sequence[int]) -> list[Completion]:
        """Requests `len(sample_indices)` samples in one request (callers chunk by `max_n_per_request`).

        Retries with exponential backoff and jitter on 429 / 5xx / timeouts / connection errors /
        malformed bodies, honouring Retry-After. Returns one `Completion` per returned choice, mapped
        in order onto `sample_indices` (an endpoint that returns fewer choices leaves the rest missing).

        Raises:
          TeacherError: a non-retryable status, or retries exhausted. The message never holds the key.
        """
        indices = list(sample_indices)
        if not indices:
            return []
        body = self.request_body(question, len(indices))
        headers = {
            "Content-Type": "application/json",
            # Not used by OpenAI; lets a self-hosted server (and our tests) log which samples a request is.
            "X-Octomed-Question": urllib.parse.quote(question.key, safe=""),
            "X-Octomed-Samples": ",".join(map(str, indices)),
        }
        key = self._api_key
        if key:
            headers["Authorization"] = f"Bearer {key}"
        payload = json.dumps(body).encode("utf-8")
        last_error = "no attempt made"
        for attempt in range(self.config.max_retries + 1):
            retry_after = None
            try:
                resp = self._session().post(
                    self._url,
                    data=payload,
                    headers=headers,
                    timeout=(self.config.connect_timeout_s, self.config.read_timeout_s),
                )
            except (requests.Timeout, requests.ConnectionError) as e:
                last_error = f"{type(e).__name__}: {e}"
            else:
                if resp.status_code == 200:
                    try:
                        return self._parse(question, indices, resp.json())
                    except (ValueError, KeyError, TypeError, IndexError) as e:
                        last_error = f"malformed response body ({type(e).__name__}: {e}): {resp.text[:200]!r}"
                elif resp.status_code in RETRY_STATUS:
                    retry_after = _retry_after_s(resp.headers.get("Retry-After"))
                    last_error = f"HTTP {resp.status_code}: {resp.text[:200]!r}"
                else:
                    raise TeacherError(
                        self._redact(
                            f"teacher {self.name!r} got HTTP {resp.status_code} for {question.label}: "
                            f"{resp.text[:500]!r}"
                        )
                    )
            if attempt == self.config.max_retries:
                break
            delay = self._backoff_s(attempt, retry_after)
            log.info("teacher %s: %s; retry %d in %.2fs", self.name, self._redact(last_error), attempt + 1, delay)
            time.sleep(delay)
        raise TeacherError(
            self._redact(
                f"teacher {self.name!r}: {question.label} failed after {self.config.max_retries + 1} "
                f"attempts; last error: {last_error}"
            )
        )

    def _parse(self, question: Question, indices: list[int], body: Any) -> list[Completion]:
        choices = body["choices"]
        if not isinstance(choices, list) or not choices:
            raise ValueError("no choices")
        choices = sorted(choices, key=lambda c: int(c.get("index", 0)))[: len(indices)]
        usage = body.get("usage") or {}
        prompt = _split_evenly(usage.get("prompt_tokens") or 0, 1) + [0] * (len(choices) - 1)
        completion = _split_evenly(usage.get("completion_tokens") or 0, len(choices))
        out = []
        for i, choice in enumerate(choices):
            msg = choice["message"]
            content = msg.get("content")
            reasoning = msg.get("reasoning_content") or msg.get("reasoning")
            if content is None and reasoning is None:
                raise ValueError("choice without content")
            out.append(
                Completion(
                    question_key=question.key,
                    teacher=self.name,
                    prompt_version=self.prompt_version,
                    sample_index=indices[i],
                    content=content or "",
                    reasoning_content=reasoning,
                    finish_reason=choice.get("finish_reason"),
                    prompt_tokens=prompt[i],  # the whole request's prompt is billed once
                    completion_tokens=completion[i],
                )
            )
        return out


@dataclasses.dataclass
class Accounting:
    """Tokens and cost per teacher, summed thread-safely as responses arrive."""

    requests: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    prompt_tokens: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    completion_tokens: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    cost_usd: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    failures: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    _lock: threading.Lock = dataclasses.field(default_factory=threading.Lock, repr=False)

    def add(self, teacher: Teacher, completions: Sequence[Completion]) -> None:
        """Counts one response's completions at the teacher's prices."""
        p = sum(c.prompt_tokens for c in completions)
        c_ = sum(c.completion_tokens for c in completions)
        cost = (p * teacher.price_input_per_1m + c_ * teacher.price_output_per_1m) / 1e6
        with self._lock:
            self.requests[teacher.name] += 1
            self.prompt_tokens[teacher.name] += p
            self.completion_tokens[teacher.name] += c_
            self.cost_usd[teacher.name] += cost

    def fail(self, teacher: Teacher) -> None:
        with self._lock:
            self.failures[teacher.name] += 1

    def to_dict(self) -> dict[str, dict[str, float]]:
        """Per teacher: requests, failures, prompt/completion tokens, cost in USD."""
        names = sorted(set(self.requests) | set(self.failures))
        return {
            n: {
                "requests": self.requests[n],
                "failures": self.failures[n],
                "prompt_tokens": self.prompt_tokens[n],
                "completion_tokens": self.completion_tokens[n],
                "cost_usd": round(self.cost_usd[n], 6),
            }
            for n in names
        }


@dataclasses.dataclass(frozen=True)
class SampleResult:
    """All stored completions of one question for one teacher, once sampling is over.

    `error` is set when some samples could not be obtained (the question still carries those it has).
    """

    question: Question
    completions: tuple[Completion, ...]
    error: str | None = None


def _chunks(indices: Sequence[int], size: int) -> list[list[int]]:
    return [list(indices[i : i + size]) for i in range(0, len(indices), size)]


def sample_questions(
    teacher: Teacher | Mapping[str, Teacher],
    questions: Iterable[Question],
    store: Any,
    *,
    n: int | Mapping[str, int],
    concurrency: int = 8,
    accounting: Accounting | None = None,
    max_rounds: int = 3,
    max_pending_questions: int | None = None,
    dry_run: bool = False,
) -> Iterator[SampleResult]:
    """Samples `n` completions per question, storing each response as it arrives.

    Streams: at most `max_pending_questions` questions are in flight, so memory does not grow with
    the input. Yields each question once all its samples are stored (or it failed), in completion
    order (callers that need determinism sort later).

    Args:
      teacher: any `Teacher`, or a mapping category -> `Teacher` (R1 for text, GPT-4o for images).
      questions: the questions, streamed.
      store: a `CompletionStore` (has `missing`, `put`, `get`).
      n: samples per question, or a mapping category -> samples.
      concurrency: requests in flight at once.
      accounting: where tokens and cost are summed.
      max_rounds: how many times to re-ask for samples an endpoint did not return.
      max_pending_questions: bound on questions in flight (default 4 x concurrency).
      dry_run: request nothing; yield what the store already has.

    Yields:
      One `SampleResult` per question.
    """
    accounting = accounting if accounting is not None else Accounting()
    max_pending = max_pending_questions or max(1, 4 * concurrency)

    def route(q: Question) -> tuple[Teacher, int]:
        t = teacher if isinstance(teacher, Teacher) else teacher.get(q.category)
        if t is None:
            raise KeyError(f"no teacher for category {q.category!r} ({q.label})")
        return t, int(n if isinstance(n, int) else n[q.category])

    def one_question(q: Question) -> SampleResult:
        error = None
        t, n_q = route(q)
        chunk = max(1, int(getattr(t, "max_n_per_request", n_q) or n_q))
        for _ in range(max_rounds):
            missing = store.missing(q, t, n_q)
            if not missing or dry_run:
                break
            # Requests of one question go out together through the shared request pool.
            reqs = [request_pool.submit(one_request, t, q, idx) for idx in _chunks(missing, chunk)]
            for f in reqs:
                err = f.result()
                error = error or err
            if error:
                break
        else:
            if store.missing(q, t, n_q):
                error = f"{q.label}: endpoint returned too few samples after {max_rounds} rounds"
        return SampleResult(q, tuple(store.get(q, t, n_q)), error)

    def one_request(teacher: Teacher, q: Question, indices: list[int]) -> str | None:
        try:
            got = teacher.sample(q, indices)
        except TeacherError as e:
            accounting.fail(teacher)
            log.warning("%s", e)
            return str(e)
        wanted = set(indices)
        got = [c for c in got if c.sample_index in wanted]
        store.put(got)  # one transaction per response: committed rows survive a kill
        accounting.add(teacher, got)
        return None

    request_pool = futures.ThreadPoolExecutor(max_workers=max(1, concurrency), thread_name_prefix="teacher")
    # Question-level workers only wait on request futures, so they are cheap threads.
    question_pool = futures.ThreadPoolExecutor(max_workers=max_pending, thread_name_prefix="question")
    try:
        pending: set[futures.Future] = set()
        for q in questions:
            pending.add(question_pool.submit(one_question, q))
            if len(pending) >= max_pending:
                done, pending = futures.wait(pending, return_when=futures.FIRST_COMPLETED)
                for f in done:
                    yield f.result()
        for f in futures.as_completed(pending):
            yield f.result()
    finally:
        question_pool.shutdown(wait=True, cancel_futures=True)
        request_pool.shutdown(wait=True, cancel_futures=True)


TeacherFactory = Callable[..., Teacher]
TEACHER_KINDS: dict[str, TeacherFactory] = {}


def register_teacher_kind(kind: str, factory: TeacherFactory) -> None:
    """Registers a teacher implementation under `kind` (the recipe's teacher `kind` field).

    `factory(config: TeacherConfig, *, image_root, message_builder) -> Teacher`. "openai" is built in;
    a plugin (see `data_pipeline.plugins`) registers its own kinds. Registering the same factory again
    does nothing.

    Raises:
      ValueError: another factory already has that kind (a plugin cannot replace a registered kind).
    """
    registered = TEACHER_KINDS.get(kind)
    if registered is not None and registered is not factory:
        raise ValueError(f"teacher kind {kind!r} is already registered ({registered.__qualname__})")
    TEACHER_KINDS[kind] = factory


register_teacher_kind("openai", OpenAITeacher)


def make_teacher(
    settings: Mapping[str, Any],
    *,
    image_root: str | None = None,
    message_builder: MessageBuilder | None = None,
) -> Teacher:
    """Builds a teacher from recipe settings (a dict or ConfigDict with a `kind`, default "openai")."""
    if hasattr(settings, "to_dict"):
        settings = settings.to_dict()
    kind = settings.get("kind", "openai") or "openai"
    if kind not in TEACHER_KINDS:
        raise KeyError(f"unknown teacher kind {kind!r}; known: {sorted(TEACHER_KINDS)}; {PLUGIN_HINT}")
    return TEACHER_KINDS[kind](
        TeacherConfig.from_mapping(settings), image_root=image_root, message_builder=message_builder
    )
