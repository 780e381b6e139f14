"""The sampler against transformers' greedy `generate`, on one device and on a mesh; sampling controls."""

import jax
import numpy as np
import pytest
from gen_helpers import helpers

from octomed_jax import sharding as sharding_lib
from octomed_jax.generation import Prompt, Sampler, SamplingParams, bucket, sample_tokens
from octomed_jax.hf import load_hf

BUDGET = 10
NEVER = (151999,)  # a stop id the random model does not produce within the budget


def hf_generate(hf, prompts):
    return helpers.hf_generate(hf, prompts, BUDGET, NEVER[0])


def image_prompt(cfg, grids, text_lens, start, seed):
    grids = np.asarray(grids)
    return Prompt(
        helpers.image_prompt(grids, text_lens, start=start), helpers.pixels(grids, cfg.vision.patch_dim, seed), grids
    )


@pytest.fixture(scope="module")
def prompts(tiny_vocab_pair):
    _, _, cfg, _ = tiny_vocab_pair
    rng = np.random.RandomState(1)
    return {
        "text": Prompt(rng.randint(0, 150000, size=23)),
        "image": image_prompt(cfg, [[1, 8, 12]], [5, 7], start=100, seed=0),
        "short_text": Prompt(rng.randint(0, 150000, size=6)),
        "small_image": image_prompt(cfg, [[1, 4, 4]], [2, 3], start=3, seed=2),
    }


def tokens(completions):
    return [c[0].token_ids for c in completions]


@pytest.mark.parametrize("name", ["text", "image"])
def test_greedy_equals_transformers(tiny_vocab_pair, prompts, name):
    hf, ours, _, _ = tiny_vocab_pair
    got = Sampler(ours, stop_token_ids=NEVER).generate([prompts[name]], SamplingParams(max_new_tokens=BUDGET))
    assert tokens(got) == hf_generate(hf, [prompts[name]])
    assert got[0][0].finish_reason == "length" and got[0][0].num_tokens == BUDGET


def test_batch_of_different_lengths_equals_transformers(tiny_vocab_pair, prompts):
    """Text and image rows of different lengths in one batch (left-padded by us, as by transformers)."""
    hf, ours, _, _ = tiny_vocab_pair
    batch = [prompts["image"], prompts["short_text"], prompts["small_image"], prompts["text"]]
    want = hf_generate(hf, batch)
    got = Sampler(ours, stop_token_ids=NEVER).generate(batch, SamplingParams(max_new_tokens=BUDGET))
    assert tokens(got) == want


def test_sharded_sampler_equals_transformers(tiny_vocab_pair, prompts):
    hf, _, _, path = tiny_vocab_pair
    mesh = sharding_lib.make_mesh({"data": 4, "tensor": 2})
    sharded = load_hf(path, mesh=mesh)
    kernel = sharded.language_model.layers.self_attn.k_proj.kernel[...]
    assert len(kernel.sharding.device_set) == 8
    batch = [prompts["short_text"], prompts["small_image"]]
    sampler = Sampler(sharded, mesh=mesh, stop_token_ids=NEVER)
    got = sampler.generate(batch, SamplingParams(max_new_tokens=BUDGET))
    assert tokens(got) == hf_generate(hf, batch)


def test_stop_token_and_per_row_budgets(tiny_vocab_pair, prompts):
    _, ours, _, _ = tiny_vocab_pair
    greedy = Sampler(ours, stop_token_ids=NEVER).generate([prompts["text"]], SamplingParams(max_new_tokens=BUDGET))
    seq = greedy[0][0].token_ids
    stop_at = seq[3]  # first occurrence decides
    first = seq.index(stop_at)
    sampler = Sampler(ours, stop_token_ids=(stop_at,))
    out = sampler.generate(
        [prompts["text"], prompts["text"]], [SamplingParams(max_new_tokens=BUDGET), SamplingParams(max_new_tokens=2)]
    )
    a, b = out[0][0], out[1][0]
    assert a.finish_reason == "stop" and a.token_ids == seq[:first] and a.num_tokens == first + 1
    assert b.token_ids == seq[: min(2, first)] and b.num_tokens == min(2, first + 1)


def test_sampling_controls(tiny_vocab_pair, prompts):
    _, ours, _, _ = tiny_vocab_pair
    sampler = Sampler(ours, stop_token_ids=NEVER)
    p = [prompts["text"]]
    greedy = tokens(sampler.generate(p, SamplingParams(max_new_tokens=BUDGET)))[0]
    # top_k=1 at any temperature is greedy.
    top1 = sampler.generate(p, SamplingParams(temperature=1.5, top_k=1, n=2, max_new_tokens=BUDGET))[0]
    assert all(c.token_ids == greedy for c in top1)
    # A tiny nucleus keeps only the top token as well.
    nucleus = sampler.generate(p, SamplingParams(temperature=1.0, top_p=1e-6, max_new_tokens=BUDGET))[0]
    assert nucleus[0].token_ids == greedy
    # n samples with their own streams; the same seed repeats them exactly; another seed differs.
    hot = SamplingParams(temperature=2.0, n=4, max_new_tokens=BUDGET, seed=7)
    a = sampler.generate(p, hot)[0]
    b = sampler.generate(p, hot)[0]
    c = sampler.generate(p, SamplingParams(temperature=2.0, n=4, max_new_tokens=BUDGET, seed=8))[0]
    assert [x.token_ids for x in a] == [x.token_ids for x in b]
    assert len({tuple(x.token_ids) for x in a}) == 4
    assert [x.token_ids for x in a] != [x.token_ids for x in c]
    # An explicit key replaces the seeds.
    k = sampler.generate(p, hot, key=jax.random.PRNGKey(3))[0]
    assert [x.token_ids for x in k] == [x.token_ids for x in sampler.generate(p, hot, key=jax.random.PRNGKey(3))[0]]


def test_sample_tokens_distribution():
    """Temperature and top-k reshape the distribution as specified (checked by frequency)."""
    logits = jax.numpy.log(jax.numpy.asarray([[0.5, 0.3, 0.15, 0.05]] * 4000))
    keys = jax.random.split(jax.random.PRNGKey(0), 4000)
    ones = jax.numpy.ones((4000,))
    freq = np.bincount(np.asarray(sample_tokens(logits, keys, ones, ones, 0 * ones.astype(int))), minlength=4) / 4000
    np.testing.assert_allclose(freq, [0.5, 0.3, 0.15, 0.05], atol=0.03)
    top2 = np.asarray(sample_tokens(logits, keys, ones, ones, 2 + 0 * ones.astype(int)))
    assert set(top2.tolist()) == {0, 1}
    top_p = np.asarray(sample_tokens(logits, keys, ones, 0.7 * ones, 0 * ones.astype(int)))
    assert set(top_p.tolist()) == {0, 1}  # 0.5 < 0.7, 0.5 + 0.3 >= 0.7


def test_buckets_bound_compiled_shapes(tiny_vocab_pair):
    _, ours, _, _ = tiny_vocab_pair
    assert [bucket(n, 32) for n in (1, 32, 33, 64, 65)] == [32, 32, 64, 64, 128]
    sampler = Sampler(ours, stop_token_ids=NEVER, max_batch=4)
    rng = np.random.RandomState(5)
    prompts = [Prompt(rng.randint(0, 1000, size=n)) for n in (3, 9, 17, 20, 31, 5, 12)]
    sampler.generate(prompts, SamplingParams(max_new_tokens=3))
    assert len(sampler.compiled_shapes) <= 2  # 7 prompts of 7 lengths: two batches, one length bucket


def test_chunked_decoding_streams_the_tokens_of_one_loop(tiny_vocab_pair, prompts):
    """Streaming decodes in chunks of the same compiled loop: greedy and seeded samples equal one-loop decoding,
    and the streamed pieces add up to each completion (stop token left out)."""
    _, ours, _, _ = tiny_vocab_pair
    batch = [prompts["small_image"], prompts["text"]]
    params = [SamplingParams(max_new_tokens=BUDGET), SamplingParams(temperature=1.5, n=2, max_new_tokens=7, seed=3)]
    whole = Sampler(ours, stop_token_ids=NEVER).generate(batch, params)
    stop_at = whole[0][0].token_ids[4]
    sampler = Sampler(ours, stop_token_ids=(stop_at,))
    one_loop = sampler.generate(batch, params)
    streamed: dict[tuple[int, int], list[list[int]]] = {}
    chunked = sampler.generate(
        batch, params, on_tokens=lambda i, j, ids: streamed.setdefault((i, j), []).append(ids), chunk_tokens=3
    )
    assert [[c.token_ids for c in cs] for cs in chunked] == [[c.token_ids for c in cs] for cs in one_loop]
    assert [[c.finish_reason for c in cs] for cs in chunked] == [[c.finish_reason for c in cs] for cs in one_loop]
    first = whole[0][0].token_ids.index(stop_at)
    assert chunked[0][0].token_ids == whole[0][0].token_ids[:first] and chunked[0][0].finish_reason == "stop"
    for (i, j), pieces in streamed.items():
        assert sum(pieces, []) == chunked[i][j].token_ids
    assert [len(p) for p in streamed[(1, 0)]] == [1, 3, 3]  # the prefill's token, then chunks of 3
