"""Batched sampling from the student: prefill with images, then cached decoding in a compiled loop.

A call to `Sampler.generate` turns prompts into rows (one per sample: `n` samples of a prompt are `n`
rows with their own PRNG streams), sorts them by length, and runs them in batches. Each batch is
left-padded to a bucketed prompt length and a bucketed row count, so only a bounded set of shapes is
ever compiled; the token budget is bucketed too, and each row stops at its own budget or stop token.

One `jax.jit` (`_prefill`) runs the vision tower and the prompt through `Qwen25VL.decode_step` into a fresh
`KVCache` and samples the first token from the last prompt position; another (`_decode`) runs a
`jax.lax.while_loop` that feeds one token per row per step until every row has stopped, or, when streaming,
until a step bound, after which the same compiled loop resumes from its carry (cache included).
Positions continue M-RoPE as transformers does:
the token generated `t` steps after the prompt sits at position `max_prompt_position + 1 + t`, i.e.
`real_prompt_length + delta` from `positions.rope_index`.

Left padding puts every row's next token in the same cache slot, so the cache is written with one
`dynamic_update_slice` per layer. On a mesh the parameters keep their rule shardings (tensor-parallel
decoding) and the cache is sharded over the batch and the kv heads by the same rules.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding

from octomed_jax import sharding as sharding_lib
from octomed_jax.data.tokenizer import QWEN_SPECIAL_IDS
from octomed_jax.models import positions as pos_lib
from octomed_jax.models.families import VISION_INPUT_CLASSES
from octomed_jax.models.qwen2_5_vl import ModelInputs, Qwen25VL, VisionInputs
from octomed_jax.models.text import KVCache

DEFAULT_STOP_IDS = QWEN_SPECIAL_IDS.stop_ids


@dataclasses.dataclass(frozen=True)
class SamplingParams:
    """How to sample one prompt.

    Attributes:
      temperature: 0 for greedy decoding; otherwise logits are divided by it.
      top_p: nucleus sampling mass (1.0: off).
      top_k: keep the k most likely tokens (0: off).
      max_new_tokens: token budget per sample, the stop token included.
      n: samples per prompt.
      seed: seeds the PRNG streams of this prompt's samples when `generate` gets no key.
    """

    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    max_new_tokens: int = 256
    n: int = 1
    seed: int = 0

    def validate(self) -> SamplingParams:
        """Returns self; raises ValueError naming the bad field."""
        if not (self.temperature >= 0 and math.isfinite(self.temperature)):
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.n < 1:
            raise ValueError(f"n must be >= 1, got {self.n}")
        return self


@dataclasses.dataclass(frozen=True)
class Prompt:
    """One tokenised prompt (the chat template already applied, image pads expanded).

    Attributes:
      token_ids: int [length].
      pixel_values: float32 [patches, patch_dim] of all its images, in order, or None.
      image_grid_thw: int [num_images, 3], or None.
    """

    token_ids: np.ndarray
    pixel_values: np.ndarray | None = None
    image_grid_thw: np.ndarray | None = None

    @property
    def num_patches(self) -> int:
        return 0 if self.image_grid_thw is None else int(np.prod(np.asarray(self.image_grid_thw), axis=-1).sum())


@dataclasses.dataclass(frozen=True)
class Completion:
    """One sample.

    Attributes:
      token_ids: the generated tokens, the stop token left out.
      finish_reason: "stop" (a stop token was generated) or "length" (the budget ran out).
      num_tokens: generated tokens, the stop token included (what a response costs).
    """

    token_ids: list[int]
    finish_reason: str
    num_tokens: int


def bucket(n: int, minimum: int) -> int:
    """The smallest power of two >= max(n, minimum): the shapes a sampler compiles for."""
    n = max(int(n), int(minimum), 1)
    return 1 << (n - 1).bit_length()


# --- Sampling ----------------------------------------------------------------------------------------------


def sample_tokens(
    logits: jax.Array,
    keys: jax.Array,
    temperature: jax.Array,
    top_p: jax.Array,
    top_k: jax.Array,
) -> jax.Array:
    """One token per row from logits [batch, vocab], each row with its own key and settings.

    Rows with temperature 0 take the argmax. Others sample from softmax(logits / temperature)
    restricted to the top_k most likely tokens (0: all) and to the smallest set whose mass reaches
    top_p (the most likely token is always kept). The full-vocabulary sort runs only when some row
    samples, so greedy batches pay for an argmax alone.
    """
    logits = logits.astype(jnp.float32)
    greedy = jnp.argmax(logits, axis=-1).astype(jnp.int32)

    def sampled() -> jax.Array:
        vocab = logits.shape[-1]
        scaled = logits / jnp.where(temperature > 0, temperature, 1.0)[:, None]
        order = jnp.argsort(-scaled, axis=-1)
        ranked = jnp.take_along_axis(scaled, order, axis=-1)
        rank = jnp.arange(vocab)[None, :]
        k = jnp.where(top_k > 0, top_k, vocab)[:, None]
        ranked = jnp.where(rank < k, ranked, -jnp.inf)
        probs = jax.nn.softmax(ranked, axis=-1)
        mass_before = jnp.cumsum(probs, axis=-1) - probs  # exclusive: the top token always survives
        ranked = jnp.where(mass_before < top_p[:, None], ranked, -jnp.inf)
        choice = jax.vmap(jax.random.categorical)(keys, ranked)
        token = jnp.take_along_axis(order, choice[:, None], axis=-1)[:, 0].astype(jnp.int32)
        return jnp.where(temperature > 0, token, greedy)

    return jax.lax.cond(jnp.any(temperature > 0), sampled, lambda: greedy)


@dataclasses.dataclass(frozen=True)
class _Batch:
    """Host arrays of one padded batch (all NumPy; rows beyond the real ones are dummies)."""

    input_ids: np.ndarray  # int32 [B, P], left-padded
    segment_ids: np.ndarray  # int32 [B, P], 1 real / 0 pad
    positions: np.ndarray  # int32 [3, B, P]
    next_position: np.ndarray  # int32 [B]: position of the first generated token
    temperature: np.ndarray  # float32 [B]
    top_p: np.ndarray  # float32 [B]
    top_k: np.ndarray  # int32 [B]
    max_new: np.ndarray  # int32 [B]
    keys: np.ndarray  # uint32 [B, 2] raw PRNG key data
    vision: VisionInputs | None


def _pick(model: Qwen25VL, hidden_last: jax.Array, step: jax.Array, rows: dict[str, jax.Array]) -> jax.Array:
    """The next token of every row from the last hidden states, with its own key and settings."""
    logits = model.language_model.logits(hidden_last)
    step_keys = jax.vmap(jax.random.fold_in, in_axes=(0, None))(jax.random.wrap_key_data(rows["keys"]), step)
    return sample_tokens(logits, step_keys, rows["temperature"], rows["top_p"], rows["top_k"])


def _prefill(
    graphdef: nnx.GraphDef,
    state: nnx.State,
    inputs: ModelInputs,
    rows: dict[str, jax.Array],
    *,
    budget: int,
    stop_ids: tuple[int, ...],
    cache_sharding: NamedSharding | None,
) -> dict[str, jax.Array]:
    """The prompt (and its images) through the model into a fresh cache, and the first token of every row.

    Args:
      rows: per-row arrays: next_position, temperature, top_p, top_k, max_new, keys (raw key data).

    Returns:
      The decoding carry: t (steps done), token [B], cache, tokens int32 [B, budget] (0 after a row stops),
      done, stopped bool [B], count int32 [B], kv_segments int32 [B, prompt_len + budget].
    """
    model: Qwen25VL = nnx.merge(graphdef, state)
    batch, prompt_len = inputs.input_ids.shape
    cache = KVCache.init(model.cfg, batch, prompt_len + budget)
    if cache_sharding is not None:
        cache = jax.tree.map(lambda c: jax.lax.with_sharding_constraint(c, cache_sharding), cache)
    kv_segments = jnp.concatenate([inputs.segment_ids, jnp.ones((batch, budget), jnp.int32)], axis=1)
    hidden, cache = model.decode_step(inputs, cache, 0, kv_segments)
    token = _pick(model, hidden[:, -1], jnp.int32(0), rows)
    stopped = jnp.isin(token, jnp.asarray(stop_ids, jnp.int32))
    return {
        "t": jnp.int32(0),
        "token": token,
        "cache": cache,
        "tokens": jnp.zeros((batch, budget), jnp.int32).at[:, 0].set(token),
        "done": stopped | (rows["max_new"] <= 1),
        "stopped": stopped,
        "count": jnp.ones((batch,), jnp.int32),
        "kv_segments": kv_segments,
    }


def _decode(
    graphdef: nnx.GraphDef,
    state: nnx.State,
    carry: dict[str, jax.Array],
    rows: dict[str, jax.Array],
    end: jax.Array,
    *,
    stop_ids: tuple[int, ...],
) -> dict[str, jax.Array]:
    """Cached decoding, one token per row per step, until step `end`, the budget, or every row has stopped.

    `end` is traced, so decoding all at once (`end` = budget) and in chunks of a few tokens (streaming) run the
    same compiled loop with the same steps: their tokens are equal.
    """
    batch, budget = carry["tokens"].shape
    prompt_len = carry["kv_segments"].shape[1] - budget
    stop = jnp.asarray(stop_ids, jnp.int32)

    def cond(c: tuple[dict[str, jax.Array], nnx.State]) -> jax.Array:
        t = c[0]["t"]
        return (t + 1 < budget) & (t < end) & ~jnp.all(c[0]["done"])

    def body(c: tuple[dict[str, jax.Array], nnx.State]) -> tuple[dict[str, jax.Array], nnx.State]:
        carry, params = c
        t, done = carry["t"], carry["done"]
        pos = jnp.broadcast_to((rows["next_position"] + t)[None, :, None], (3, batch, 1))
        step_inputs = ModelInputs(
            input_ids=carry["token"][:, None],
            positions=pos,
            segment_ids=jnp.ones((batch, 1), jnp.int32),
            vision=None,
        )
        # NNX variables cannot cross trace levels: the parameters ride in the carry, unchanged.
        step_model: Qwen25VL = nnx.merge(graphdef, params)
        hidden, cache = step_model.decode_step(step_inputs, carry["cache"], prompt_len + t, carry["kv_segments"])
        new = jnp.where(done, 0, _pick(step_model, hidden[:, 0], t + 1, rows))
        count = carry["count"] + (~done).astype(jnp.int32)
        hit = ~done & jnp.isin(new, stop)
        return {
            "t": t + 1,
            "token": new,
            "cache": cache,
            "tokens": jax.lax.dynamic_update_slice(carry["tokens"], new[:, None], (0, t + 1)),
            "done": done | hit | (count >= rows["max_new"]),
            "stopped": carry["stopped"] | hit,
            "count": count,
            "kv_segments": carry["kv_segments"],
        }, params

    return jax.lax.while_loop(cond, body, (carry, state))[0]


_prefill_jit = jax.jit(_prefill, static_argnames=("graphdef", "budget", "stop_ids", "cache_sharding"))
# The carry (its cache above all) is updated in place from one chunk to the next.
_decode_jit = jax.jit(_decode, static_argnames=("graphdef", "stop_ids"), donate_argnames=("carry",))


class Sampler:
    """Generates completions from a `Qwen25VL`, optionally sharded over a mesh.

    Example:
      sampler = Sampler(model)
      out = sampler.generate([Prompt(ids)], SamplingParams(temperature=0.6, top_p=0.95, n=4))
      out[0][0].token_ids

    Args:
      model: the model (its parameters already placed: one device, or sharded by `rules` over `mesh`).
      mesh: the mesh the parameters live on; batches and the cache are then sharded by `rules`.
      rules: logical axis rules (`batch` and `kv_heads` decide the cache sharding).
      stop_token_ids: tokens that end a sample (default `<|im_end|>`, `<|endoftext|>`).
      max_batch: most rows per compiled call (rounded up to a power of two).
      min_prompt_bucket: smallest prompt-length bucket.
      min_budget_bucket: smallest token-budget bucket.
      min_patch_bucket: smallest vision-patch bucket.
    """

    def __init__(
        self,
        model: Qwen25VL,
        *,
        mesh: Mesh | None = None,
        rules: sharding_lib.Rules = sharding_lib.DEFAULT_RULES,
        stop_token_ids: Sequence[int] = DEFAULT_STOP_IDS,
        max_batch: int = 32,
        min_prompt_bucket: int = 32,
        min_budget_bucket: int = 16,
        min_patch_bucket: int = 64,
    ):
        self.model = model
        self.cfg = model.cfg
        self.mesh = mesh
        self.rules = rules
        self.stop_token_ids = tuple(int(i) for i in stop_token_ids)
        self.min_prompt_bucket = min_prompt_bucket
        self.min_budget_bucket = min_budget_bucket
        self.min_patch_bucket = min_patch_bucket
        # The batch must split evenly over the data-parallel mesh axes.
        self._batch_multiple = 1
        if mesh is not None:
            spec = sharding_lib.logical_to_mesh(("batch",), rules)[0]
            axes = () if spec is None else (spec,) if isinstance(spec, str) else tuple(spec)
            self._batch_multiple = int(np.prod([mesh.shape[a] for a in axes])) if axes else 1
        self.max_batch = max(bucket(max_batch, 1), self._batch_multiple)
        self.compiled_shapes: set[tuple[Any, ...]] = set()

    # -- public -------------------------------------------------------------------------------------------

    def generate(
        self,
        prompts: Sequence[Prompt],
        params: SamplingParams | Sequence[SamplingParams] = SamplingParams(),
        *,
        key: jax.Array | None = None,
        first_index: int = 0,
        progress: Callable[[int], None] | None = None,
        on_tokens: Callable[[int, int, list[int]], None] | None = None,
        chunk_tokens: int = 8,
    ) -> list[list[Completion]]:
        """Samples completions for every prompt.

        Args:
          prompts: tokenised prompts of any lengths, with or without images.
          params: one SamplingParams for all prompts, or one per prompt (different temperatures,
            budgets and `n` may share a batch).
          key: a PRNG key; sample j of prompt i uses fold_in(fold_in(key, first_index + i), j). Without it,
            prompt i uses fold_in(PRNGKey(params[i].seed), j), so a request's samples do not depend on its batch.
          first_index: index of the first prompt in a longer list processed in chunks (keys only).
          progress: called with the number of rows finished after each compiled call.
          on_tokens: streaming: decode in compiled chunks of `chunk_tokens` steps and, after the prefill and after
            each chunk, call `on_tokens(i, j, new_token_ids)` for sample j of prompt i (stop tokens left out).
            The tokens are those of decoding in one loop. None: one loop, no host round trips.
          chunk_tokens: decoding steps between two `on_tokens` rounds.

        Returns:
          For each prompt, its `n` completions.
        """
        if isinstance(params, SamplingParams):
            params = [params] * len(prompts)
        if len(params) != len(prompts):
            raise ValueError(f"{len(params)} SamplingParams for {len(prompts)} prompts")
        if chunk_tokens < 1:
            raise ValueError(f"chunk_tokens must be >= 1, got {chunk_tokens}")
        for p in params:
            p.validate()
        rows = [(i, j) for i, p in enumerate(params) for j in range(p.n)]
        row_keys = self._row_keys(rows, params, key, first_index)
        # Similar lengths together: less padding, fewer distinct buckets.
        order = sorted(range(len(rows)), key=lambda r: (len(prompts[rows[r][0]].token_ids), r))
        results: list[list[Completion | None]] = [[None] * p.n for p in params]
        for start in range(0, len(order), self.max_batch):
            chunk = order[start : start + self.max_batch]
            completions = self._run_batch(
                [rows[r] for r in chunk], prompts, params, row_keys[chunk], on_tokens, chunk_tokens
            )
            for r, c in zip(chunk, completions, strict=True):
                i, j = rows[r]
                results[i][j] = c
            if progress is not None:
                progress(len(chunk))
        return results  # type: ignore[return-value]

    # -- internals ----------------------------------------------------------------------------------------

    @staticmethod
    def _row_keys(
        rows: list[tuple[int, int]], params: Sequence[SamplingParams], key: jax.Array | None, first_index: int
    ) -> np.ndarray:
        if not rows:
            return np.zeros((0, 2), np.uint32)
        prompt_ids = jnp.asarray([first_index + i for i, _ in rows], jnp.uint32)
        sample_ids = jnp.asarray([j for _, j in rows], jnp.uint32)
        if key is not None:
            base = jax.random.key_data(key) if jnp.issubdtype(key.dtype, jax.dtypes.prng_key) else key
            fold = jax.vmap(lambda i, j: jax.random.fold_in(jax.random.fold_in(base, i), j))
            out = fold(prompt_ids, sample_ids)
        else:
            seeds = jnp.asarray([params[i].seed for i, _ in rows], jnp.uint32)
            out = jax.vmap(lambda s, j: jax.random.fold_in(jax.random.PRNGKey(s), j))(seeds, sample_ids)
        return np.asarray(out, np.uint32)

    def _prepare(
        self,
        rows: list[tuple[int, int]],
        prompts: Sequence[Prompt],
        params: Sequence[SamplingParams],
        keys: np.ndarray,
    ) -> tuple[_Batch, int]:
        """Left-pads one batch to its buckets and computes positions on the host."""
        lengths = [len(prompts[i].token_ids) for i, _ in rows]
        batch = max(bucket(len(rows), 1), self._batch_multiple)
        plen = bucket(max(lengths), self.min_prompt_bucket)
        budget = bucket(max(params[i].max_new_tokens for i, _ in rows), self.min_budget_bucket)
        ids = np.zeros((batch, plen), np.int32)
        seg = np.zeros((batch, plen), np.int32)
        grids, pixels = [], []
        for b, (i, _) in enumerate(rows):
            p = prompts[i]
            tok = np.asarray(p.token_ids, np.int32)
            ids[b, plen - len(tok) :] = tok
            seg[b, plen - len(tok) :] = 1
            if p.image_grid_thw is not None and len(p.image_grid_thw):
                grids.append(np.asarray(p.image_grid_thw, np.int64).reshape(-1, 3))
                pixels.append(np.asarray(p.pixel_values, np.float32))
        # Dummy rows: one real token each, so every row has a well-defined last position.
        seg[len(rows) :, -1] = 1
        grid = np.concatenate(grids) if grids else None
        positions, deltas = pos_lib.prompt_positions(ids, grid, seg, self.cfg)  # the family's positions
        next_position = seg.sum(axis=1).astype(np.int32) + deltas
        vision = None
        if grid is not None:
            n_patches = int(np.prod(grid, axis=-1).sum())
            pad_to = bucket(n_patches, self.min_patch_bucket)
            if self.cfg.traits.tiled:  # rows are padded in whole tiles
                pad_to = -(-pad_to // self.cfg.vision.num_tile_patches)
            vision = VISION_INPUT_CLASSES[self.cfg.family].build(  # the model family's vision layout
                np.concatenate(pixels), grid, self.cfg, pad_to=pad_to
            )

        def per_row(f: Callable[[SamplingParams], Any], dtype: Any, fill: Any) -> np.ndarray:
            out = np.full((batch,), fill, dtype)
            out[: len(rows)] = [f(params[i]) for i, _ in rows]
            return out

        row_keys = np.zeros((batch, 2), np.uint32)
        row_keys[: len(rows)] = keys
        return (
            _Batch(
                input_ids=ids,
                segment_ids=seg,
                positions=positions,
                next_position=next_position,
                temperature=per_row(lambda p: p.temperature, np.float32, 0.0),
                top_p=per_row(lambda p: p.top_p, np.float32, 1.0),
                top_k=per_row(lambda p: p.top_k, np.int32, 0),
                max_new=per_row(lambda p: p.max_new_tokens, np.int32, 1),
                keys=row_keys,
                vision=vision,
            ),
            budget,
        )

    def _put(self, x: np.ndarray, batch_axis: int = 0) -> jax.Array:
        if self.mesh is None:
            return jnp.asarray(x)
        return jax.device_put(x, sharding_lib.batch_sharding(self.mesh, self.rules, x.ndim, batch_axis))

    def _run_batch(
        self,
        rows: list[tuple[int, int]],
        prompts: Sequence[Prompt],
        params: Sequence[SamplingParams],
        keys: np.ndarray,
        on_tokens: Callable[[int, int, list[int]], None] | None = None,
        chunk_tokens: int = 8,
    ) -> list[Completion]:
        b, budget = self._prepare(rows, prompts, params, keys)
        vision = b.vision
        if vision is not None and self.mesh is not None:  # one row of images for the batch: replicated
            vision = jax.device_put(vision, NamedSharding(self.mesh, jax.sharding.PartitionSpec()))
        inputs = ModelInputs(
            input_ids=self._put(b.input_ids),
            positions=self._put(b.positions, 1),
            segment_ids=self._put(b.segment_ids),
            vision=vision,
        )
        cache_sharding = None
        if self.mesh is not None:
            spec = sharding_lib.logical_to_mesh(("layers", "batch", None, "kv_heads", None), self.rules)
            cache_sharding = NamedSharding(self.mesh, spec)
        graphdef, state = nnx.split(self.model)
        self.compiled_shapes.add((b.input_ids.shape, budget, None if vision is None else vision.pixel_values.shape))
        per_row = {
            "next_position": self._put(b.next_position),
            "temperature": self._put(b.temperature),
            "top_p": self._put(b.top_p),
            "top_k": self._put(b.top_k),
            "max_new": self._put(b.max_new),
            "keys": self._put(b.keys),
        }
        carry = _prefill_jit(
            graphdef,
            state,
            inputs,
            per_row,
            budget=budget,
            stop_ids=self.stop_token_ids,
            cache_sharding=cache_sharding,
        )
        decode = lambda carry, end: _decode_jit(
            graphdef, state, carry, per_row, jnp.int32(end), stop_ids=self.stop_token_ids
        )
        if on_tokens is None:
            carry = decode(carry, budget)
        else:
            sent = [0] * len(rows)
            while True:
                t, done = (np.asarray(jax.device_get(carry[k])) for k in ("t", "done"))
                self._emit(rows, carry, sent, on_tokens)
                if int(t) + 1 >= budget or done.all():
                    break
                carry = decode(carry, int(t) + chunk_tokens)
        tokens, count, stopped = (np.asarray(jax.device_get(carry[k])) for k in ("tokens", "count", "stopped"))
        out = []
        for r in range(len(rows)):
            n = int(count[r])
            ids = tokens[r, :n].tolist()
            if stopped[r]:
                ids = ids[:-1]
            out.append(Completion(token_ids=ids, finish_reason="stop" if stopped[r] else "length", num_tokens=n))
        return out

    @staticmethod
    def _emit(
        rows: list[tuple[int, int]],
        carry: dict[str, jax.Array],
        sent: list[int],
        on_tokens: Callable[[int, int, list[int]], None],
    ) -> None:
        """Hands each row's tokens generated since the last call to `on_tokens` (a stop token left out)."""
        tokens, count, stopped = (np.asarray(jax.device_get(carry[k])) for k in ("tokens", "count", "stopped"))
        for r, (i, j) in enumerate(rows):
            upto = int(count[r]) - int(bool(stopped[r]))
            if upto > sent[r]:
                on_tokens(i, j, tokens[r, sent[r] : upto].tolist())
                sent[r] = upto


__all__ = [
    "DEFAULT_STOP_IDS",
    "Completion",
    "Prompt",
    "Sampler",
    "SamplingParams",
    "bucket",
    "sample_tokens",
]
