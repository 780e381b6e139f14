"""The Qwen2 language model of Qwen2.5-VL: GQA attention with qkv bias, M-RoPE, gated SiLU MLP."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx, struct

from octomed_jax.models import attention, stacking
from octomed_jax.models.config import ModelConfig
from octomed_jax.models.layers import (
    GatedMLP,
    RMSNorm,
    apply_rotary,
    dense,
    dot_product_attention,
)


@struct.dataclass
class KVCache:
    """Rotated keys and values of every layer, for decoding: k, v [layers, batch, length, kv_heads, head_dim].

    Slot `i` of a row holds the token at cache index `i` (prompt then generated tokens); slots not yet
    written are excluded by the causal mask, so they need no clearing.
    """

    k: jax.Array
    v: jax.Array

    @classmethod
    def init(cls, cfg: ModelConfig, batch: int, length: int, dtype: jnp.dtype | None = None) -> KVCache:
        """An all-zero cache of `length` slots per row, in the compute dtype by default."""
        t = cfg.text
        shape = (t.num_hidden_layers, batch, length, t.num_key_value_heads, t.head_dim)
        dtype = cfg.jnp_dtype if dtype is None else dtype
        return cls(k=jnp.zeros(shape, dtype), v=jnp.zeros(shape, dtype))

    @property
    def length(self) -> int:
        return int(self.k.shape[2])


class Attention(nnx.Module):
    qkv_bias = True  # Qwen2's q/k/v projections have biases (Qwen3's: none)

    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        t = cfg.text
        self.num_heads, self.num_kv_heads, self.head_dim = t.num_attention_heads, t.num_key_value_heads, t.head_dim
        self.cfg = cfg
        q_dim, kv_dim = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        self.q_proj = dense(t.hidden_size, q_dim, ("embed", "heads"), cfg, rngs, use_bias=self.qkv_bias)
        self.k_proj = dense(t.hidden_size, kv_dim, ("embed", "kv_heads"), cfg, rngs, use_bias=self.qkv_bias)
        self.v_proj = dense(t.hidden_size, kv_dim, ("embed", "kv_heads"), cfg, rngs, use_bias=self.qkv_bias)
        self.o_proj = dense(q_dim, t.hidden_size, ("heads", "embed"), cfg, rngs, use_bias=False)

    def project_kv(self, x: jax.Array, cos: jax.Array, sin: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Rotated keys and values [batch, seq, kv_heads, head_dim] (what a decoding cache stores)."""
        b, s, _ = x.shape
        k = self.k_proj(x).reshape(b, s, self.num_kv_heads, self.head_dim)
        v = self.v_proj(x).reshape(b, s, self.num_kv_heads, self.head_dim)
        return apply_rotary(k, cos, sin), v

    def __call__(self, x: jax.Array, cos: jax.Array, sin: jax.Array, segment_ids: jax.Array) -> jax.Array:
        """Causal self-attention within segments: x [batch, seq, embed], segment_ids [batch, seq]."""
        k, v = self.project_kv(x, cos, sin)
        out = attention.self_attention(self._query(x, cos, sin), k, v, segment_ids, causal=True, cfg=self.cfg)
        return self._output(out)

    def attend_cache(
        self, x: jax.Array, cos: jax.Array, sin: jax.Array, mask: jax.Array, kv: tuple[jax.Array, jax.Array]
    ) -> jax.Array:
        """x [batch, seq, embed] attends to the keys/values `kv` of a cache under `mask` [batch, 1, seq, cache]."""
        out = dot_product_attention(self._query(x, cos, sin), *kv, mask, self.cfg.attention_impl)
        return self._output(out)

    def _query(self, x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
        b, s, _ = x.shape
        return apply_rotary(self.q_proj(x).reshape(b, s, self.num_heads, self.head_dim), cos, sin)

    def _output(self, out: jax.Array) -> jax.Array:
        return self.o_proj(out.reshape(*out.shape[:2], self.num_heads * self.head_dim))


class DecoderLayer(nnx.Module):
    attention_class: type[Attention] = Attention  # a family's attention (Qwen3: q/k norms)

    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        t = cfg.text
        self.input_layernorm = RMSNorm(t.hidden_size, t.rms_norm_eps, cfg)
        self.self_attn = self.attention_class(cfg, rngs)
        self.post_attention_layernorm = RMSNorm(t.hidden_size, t.rms_norm_eps, cfg)
        self.mlp = GatedMLP(t.hidden_size, t.intermediate_size, cfg, rngs, use_bias=False)

    def __call__(self, x: jax.Array, cos: jax.Array, sin: jax.Array, segment_ids: jax.Array) -> jax.Array:
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, segment_ids)
        return x + self.mlp(self.post_attention_layernorm(x))


def _add_to_layer(x: jax.Array, i: jax.Array, layer_adds: jax.Array | None) -> jax.Array:
    """Layer i's output plus `layer_adds[i]` for i < n (Qwen3-VL's DeepStack features); x alone when None."""
    if layer_adds is None:
        return x
    n = layer_adds.shape[0]
    return x + jnp.where(i < n, layer_adds[jnp.minimum(i, n - 1)], 0).astype(x.dtype)


class TextModel(nnx.Module):
    """Token embedding, the stacked decoder layers, the final norm and the vocabulary projection."""

    layer_class: type[DecoderLayer] = DecoderLayer  # a family's decoder layer

    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        t = cfg.text
        self.cfg = cfg
        self.embed_tokens = nnx.Embed(
            t.vocab_size,
            t.hidden_size,
            dtype=cfg.jnp_dtype,
            param_dtype=cfg.jnp_param_dtype,
            embedding_init=nnx.with_partitioning(jax.nn.initializers.normal(0.02), ("vocab", "embed")),
            rngs=rngs,
        )
        self.layers = stacking.stack(lambda r: self.layer_class(cfg, r), t.num_hidden_layers, rngs)
        self.norm = RMSNorm(t.hidden_size, t.rms_norm_eps, cfg)
        if not t.tie_word_embeddings:
            self.lm_head = dense(t.hidden_size, t.vocab_size, ("embed", "vocab"), cfg, rngs, use_bias=False)

    def __call__(
        self, x: jax.Array, cos: jax.Array, sin: jax.Array, segment_ids: jax.Array, layer_adds: jax.Array | None = None
    ) -> jax.Array:
        """Final hidden states [batch, seq, embed] from input embeddings [batch, seq, embed].

        Tokens attend causally within their segment (`segment_ids` [batch, seq]: packed examples 1, 2, ...,
        padding 0), through the kernel `model.attention_impl` names. `layer_adds` [n, batch, seq, embed]
        (Qwen3-VL's DeepStack features, zero off the image tokens) is added to the output of layer i < n.
        """
        if layer_adds is None:
            body = lambda layer, x, _: layer(x, cos, sin, segment_ids)  # noqa: E731
            return self.norm(stacking.run(self.layers, body, x, None, self.cfg))
        body = lambda layer, x, i: _add_to_layer(layer(x, cos, sin, segment_ids), i, layer_adds)  # noqa: E731
        return self.norm(stacking.run(self.layers, body, x, jnp.arange(self.cfg.text.num_hidden_layers), self.cfg))

    def logits(self, hidden: jax.Array) -> jax.Array:
        """Vocabulary logits for hidden states [..., embed] (tied or untied head)."""
        if self.cfg.text.tie_word_embeddings:
            w = self.embed_tokens.embedding[...].astype(self.cfg.jnp_dtype)
            return jnp.einsum("...d,vd->...v", hidden, w, precision=jax.lax.Precision.HIGHEST)
        return self.lm_head(hidden)

    def decode_step(
        self,
        x: jax.Array,
        cos: jax.Array,
        sin: jax.Array,
        mask: jax.Array,
        cache: KVCache,
        index: jax.Array | int,
        layer_adds: jax.Array | None = None,
    ) -> tuple[jax.Array, KVCache]:
        """Runs `x` [batch, seq, embed] (a prompt or one new token per row) against a key-value cache.

        The keys/values of `x` are written into `cache` at slots `index .. index + seq - 1` (the same slots
        for every row: prompts are left-padded), then every layer attends over the whole cache under
        `mask` [batch, 1, seq, cache_length]. The cache is a carry of the layer scan, updated in place.
        `layer_adds` as in `__call__` (a prefill with Qwen3-VL images).

        Returns:
          Final-norm hidden states [batch, seq, embed] and the updated cache.
        """

        def body(layer: DecoderLayer, carry: tuple[jax.Array, jax.Array, jax.Array], i: jax.Array):
            h, ck, cv = carry
            attn = layer.self_attn
            normed = layer.input_layernorm(h)
            k_new, v_new = attn.project_kv(normed, cos, sin)
            start = (i, 0, index, 0, 0)
            ck = jax.lax.dynamic_update_slice(ck, k_new[None].astype(ck.dtype), start)
            cv = jax.lax.dynamic_update_slice(cv, v_new[None].astype(cv.dtype), start)
            h = h + attn.attend_cache(normed, cos, sin, mask, (ck[i], cv[i]))
            h = h + layer.mlp(layer.post_attention_layernorm(h))
            return _add_to_layer(h, i, layer_adds), ck, cv

        layer_ids = jnp.arange(self.cfg.text.num_hidden_layers)
        x, k, v = stacking.run(self.layers, body, (x, cache.k, cache.v), layer_ids, self.cfg)
        return self.norm(x), KVCache(k=k, v=v)
