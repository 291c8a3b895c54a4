"""Temporal self-consistency voting (`remdm_jax.eval.voting`) and the per-step clean-sequence
estimates it votes over (`record_predictions`): exact weights and winners, and estimates that
are the step's tokens with the argmax where still masked, without changing the tokens."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import remdm_jax
from remdm_jax.eval.voting import TemporalVote, majority

V, MASK, L = 4, 3, 6
LOGITS = np.array([2.0, 0.0, 1.0, 0.0], np.float32)   # argmax id 0


def product(z, t):
  return jnp.broadcast_to(jnp.asarray(LOGITS), z.shape + (V,))


def test_weights_grow_with_the_step():
  np.testing.assert_allclose(TemporalVote(alpha=2.0).weights(4),
                             [math.exp(2.0 * k / 4) for k in (1, 2, 3, 4)])
  assert TemporalVote(alpha=0.0).weights(3) == [1.0, 1.0, 1.0]


def test_later_steps_outvote_earlier_ones_and_none_does_not_vote():
  answers = ["a", "a", None, "b", "b"]
  assert TemporalVote(alpha=0.0)(answers) == "b"        # 2 against 2: the later one
  assert TemporalVote(alpha=0.0)(["a", "a", "a", "b"]) == "a"
  assert TemporalVote(alpha=5.0)(["a", "a", "a", "b"]) == "b"   # e^5 > e^1.25 + e^2.5 + e^3.75
  assert TemporalVote()([None, None]) is None
  assert majority(["x", "y", "y", None]) == "y"


def test_negative_alpha_is_refused():
  with pytest.raises(ValueError, match="alpha must be in"):
    TemporalVote(alpha=-1.0)


@pytest.mark.parametrize("cfg", [
    remdm_jax.sampler_config(strategy="cap", num_steps=6, eta=0.1),
    remdm_jax.sampler_config("llada", block_length=3, num_steps=3, temperature=1.0)],
    ids=["cap", "blocks"])
def test_each_step_predicts_its_tokens_and_the_argmax_where_masked(cfg):
  options = dict(batch_size=3, seq_len=L, mask_id=MASK, return_trajectory=True)
  plain = remdm_jax.sample(jax.random.key(0), product, cfg, **options)
  traced = remdm_jax.sample(jax.random.key(0), product, cfg, record_predictions=True,
                            **options)
  np.testing.assert_array_equal(traced.tokens, plain.tokens)
  assert plain.predicted is None
  steps, predicted = np.asarray(traced.steps), np.asarray(traced.predicted)
  filled = np.where(steps == MASK, 0, steps)
  if isinstance(cfg, remdm_jax.BlockConfig):   # the current block only; later ones masked
    block = np.arange(steps.shape[0]) // 3
    later = np.arange(L)[None, :] >= 3 * (block[:, None] + 1)                 # [n, L]
    filled = np.where(later[:, None, :], MASK, filled)
  np.testing.assert_array_equal(predicted, filled)


def test_record_predictions_needs_the_trajectory():
  with pytest.raises(ValueError, match="pass return_trajectory=True"):
    remdm_jax.sample(jax.random.key(0), product, remdm_jax.SamplerConfig(num_steps=2),
                     batch_size=1, seq_len=L, mask_id=MASK, record_predictions=True)
