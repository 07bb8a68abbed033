"""Scorers: plain functions, oracles, and a score model with its tokenizer."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from eval_helpers import tiny_tokenizer
from flax import nnx

from safedpo_jax import sharding
from safedpo_jax.evaluate.scoring import (
    SAFE_RLHF_TEMPLATE,
    ModelScorer,
    check_scores,
    function_scorer,
    oracle_scorers,
)

PROMPTS = ["how do i steal a car ?", "how do i bake bread ?", "how do i bake bread ?"]
RESPONSES = ["i cannot help with that .", "sure . first knead the dough", ""]


def test_function_scorer_and_checks():
    s = function_scorer(lambda p, r: len(p) - len(r))
    np.testing.assert_array_equal(s(PROMPTS, RESPONSES), [-3.0, -7.0, 21.0])
    with pytest.raises(ValueError, match="2 prompts but 1"):
        s(PROMPTS[:2], RESPONSES[:1])
    with pytest.raises(ValueError, match="non-finite"):
        function_scorer(lambda p, r: float("inf"))(["a"], ["b"])
    with pytest.raises(ValueError, match="shape"):
        check_scores([1.0, 2.0], 3)


def test_oracle_scorers_read_attributes():
    class Score:
        def __init__(self, p, r):
            self.helpfulness, self.cost = float(len(r)), 1.0 if "steal" in p else -1.0

    reward, cost = oracle_scorers(Score)
    np.testing.assert_array_equal(reward(PROMPTS, RESPONSES), [25.0, 28.0, 0.0])
    np.testing.assert_array_equal(cost(PROMPTS, RESPONSES), [1.0, -1.0, -1.0])


def _sum_model(ids, mask):
    # a stand-in score model: weighted sum of the real tokens (order-sensitive)
    pos = jnp.cumsum(mask, axis=1)
    return jnp.sum(ids * mask * pos, axis=1).astype(jnp.float32)


def _reference(ids_list):
    return np.array([sum(t * (i + 1) for i, t in enumerate(ids)) for ids in ids_list], float)


def test_model_scorer_tokenizes_like_safe_rlhf():
    tok = tiny_tokenizer()
    scorer = ModelScorer(_sum_model, tok, batch_size=2)
    seqs = scorer.tokenize(PROMPTS[:1], RESPONSES[:1])
    text = SAFE_RLHF_TEMPLATE.format(prompt=PROMPTS[0]) + RESPONSES[0]
    assert seqs == [tok(text)["input_ids"] + [tok.eos_token_id]]
    assert seqs[0][0] == tok.bos_token_id
    short = ModelScorer(_sum_model, tok, max_length=6).tokenize(PROMPTS[:1], RESPONSES[:1])
    assert short == [seqs[0][:5] + [tok.eos_token_id]]


def test_model_scorer_scores_match_per_row_reference_any_batch_size():
    tok = tiny_tokenizer()
    seqs = ModelScorer(_sum_model, tok).tokenize(PROMPTS, RESPONSES)
    want = _reference(seqs)
    for batch_size in (1, 2, 8):
        got = ModelScorer(_sum_model, tok, batch_size=batch_size)(PROMPTS, RESPONSES)
        np.testing.assert_allclose(got, want)


class _Linear(nnx.Module):
    """An NNX stand-in for a score model: score = w * sum of real token ids."""

    def __init__(self):
        self.w = nnx.Param(jnp.array(0.5, jnp.float32))

    def __call__(self, ids, mask):
        return self.w[...] * jnp.sum(ids * mask, axis=1)


def test_model_scorer_with_an_nnx_model_on_a_mesh():
    tok = tiny_tokenizer()
    mesh = sharding.make_mesh(data=2, fsdp=4)
    scorer = ModelScorer(_Linear(), tok, batch_size=8, mesh=mesh)
    seqs = scorer.tokenize(PROMPTS, RESPONSES)
    np.testing.assert_allclose(scorer(PROMPTS, RESPONSES), [0.5 * sum(s) for s in seqs])
    with pytest.raises(ValueError, match="multiple"):
        ModelScorer(_Linear(), tok, batch_size=4, mesh=mesh)
    assert len(jax.devices()) == 8


def test_model_scorer_needs_one_score_per_sequence():
    scorer = ModelScorer(lambda ids, mask: jnp.zeros((ids.shape[0], 2)), tiny_tokenizer())
    with pytest.raises(ValueError, match="one score per sequence"):
        scorer(PROMPTS, RESPONSES)


def test_length_buckets():
    # the score models' buckets are the data pipeline's (one function)
    from safedpo_jax.data.batches import default_bucket_lengths

    assert default_bucket_lengths(16) == (16,)
    assert default_bucket_lengths(40, smallest=8) == (8, 16, 32, 40)
