"""Ranking decoders: Ye et al.'s re-predicting decoder against a NumPy loop, the intervals and
McNemar's test against direct computations, and the table."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from remdm_jax.eval.intervals import mcnemar, wilson
from remdm_jax.jobs import ranking
from remdm_jax.sampling.repredict import RepredictConfig
from remdm_jax.sampling.sampler import sample

V, MASK, B, L, P = 6, 5, 4, 9, 3
W = np.random.default_rng(1).standard_normal((V, L, V)).astype(np.float32)


def _denoiser(z, t):
  """Logits that read every token and its position: sum over positions of W[z_l, l]."""
  return jnp.asarray(W)[z, jnp.arange(L)].sum(1, keepdims=True) + jnp.asarray(W)[z, jnp.arange(L)]


def _numpy_repredict(prompt, steps):
  z = prompt.copy()
  maskable = z == MASK
  count = maskable.sum(1)
  for j in range(steps):
    t = steps - 1 - j
    logits = np.asarray(_denoiser(jnp.asarray(z), None), np.float64)
    logits[..., MASK] = -np.inf
    log_probs = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1,
                                keepdims=True)) - logits.max(-1, keepdims=True)
    x0 = np.where(maskable, log_probs.argmax(-1), z)
    score = np.where(maskable, log_probs.max(-1), np.inf)
    new = x0.copy()
    for b in range(B):
      k = count[b] * t // steps
      new[b, np.argsort(score[b], kind="stable")[:k]] = MASK
    z = new
  return z


@pytest.mark.parametrize("steps", [1, 3, 6])
def test_repredict_without_noise_matches_a_numpy_loop(steps):
  prompt = np.full((B, L), MASK, np.int32)
  prompt[:, :P] = np.random.default_rng(2).integers(0, MASK, (B, P))
  got = sample(jax.random.key(0), _denoiser, RepredictConfig(num_steps=steps,
                                                             gumbel_temperature=0.0),
               batch_size=B, seq_len=L, mask_id=MASK, prompt=prompt)
  np.testing.assert_array_equal(np.asarray(got), _numpy_repredict(prompt, steps))


def test_repredict_keeps_the_prompt_and_is_per_example():
  prompt = np.full((B, L), MASK, np.int32)
  prompt[:, :P] = 1
  config = RepredictConfig(num_steps=4, gumbel_temperature=5.0)
  whole = np.asarray(sample(jax.random.key(3), _denoiser, config, batch_size=B, seq_len=L,
                            mask_id=MASK, prompt=prompt))
  assert (whole[:, :P] == 1).all() and (whole != MASK).all()
  half = np.asarray(sample(jax.random.key(3), _denoiser, config, batch_size=2, seq_len=L,
                           mask_id=MASK, prompt=prompt[2:], first_index=2))
  np.testing.assert_array_equal(whole[2:], half)
  with pytest.raises(ValueError, match="num_steps"):
    RepredictConfig(num_steps=0)


def test_wilson_and_mcnemar_against_direct_formulas():
  low, high = wilson(8, 10)
  # the interval's ends solve |p - 0.8| = z sqrt(p (1 - p) / n)
  z = 1.959964
  for end in (low, high):
    assert abs(abs(end - 0.8) - z * math.sqrt(end * (1 - end) / 10)) < 1e-9
  assert wilson(0, 5)[0] == 0.0 and wilson(5, 5)[1] == 1.0
  first = np.array([1, 1, 1, 1, 1, 0, 0, 1, 0, 1], bool)
  second = np.array([0, 0, 0, 0, 1, 0, 1, 1, 0, 0], bool)
  b, c, p = mcnemar(first, second)
  assert (b, c) == (5, 1)
  assert abs(p - 2 * sum(math.comb(6, k) for k in range(2)) / 64) < 1e-12
  assert mcnemar(first, first)[2] == 1.0
  with pytest.raises(ValueError, match="one length"):
    mcnemar(first, second[:3])
  with pytest.raises(ValueError, match="correct"):
    wilson(4, 3)


def test_table_pairs_each_decoder_with_the_baseline_at_its_nfe():
  rng = np.random.default_rng(0)
  base = rng.random((3, 200)) < 0.5
  better = base | (rng.random((3, 200)) < 0.3)
  rows = ranking.table({("low_confidence", 8): base, ("random", 8): better,
                        ("random", 16): better})
  by = {(r.method, r.nfe): r for r in rows}
  assert by[("random", 8)].losses == 0 and by[("random", 8)].wins == int((better & ~base).sum())
  assert by[("random", 8)].p_value < 1e-6
  assert by[("random", 16)].p_value == 1.0                   # no baseline at NFE 16
  assert abs(by[("low_confidence", 8)].accuracy - base.mean()) < 1e-12
  text = ranking.markdown(rows)
  assert "| random | 8 |" in text and "**" in text


def test_every_method_builds_a_config_at_every_budget():
  for name, build in ranking.METHODS.items():
    for nfe in (4, 10, 21, 42, 84):
      assert callable(getattr(build(nfe, 42), "build_plan", None)), name


def test_agreement_of_an_approximation_with_its_exact_decoder():
  found = ranking.agreements({("blocks4", 8): ["12", "34", "56", "78"],
                              ("blocks4_dual_cache", 8): ["12", "34", "56", "70"],
                              ("threshold_0.9", 8): ["1"] * 4})     # no low_confidence run
  assert found == [("blocks4_dual_cache", "blocks4", 8, 0.75)]
  assert "| blocks4_dual_cache | blocks4 | 8 | 75.0 |" in ranking.agreement_markdown(found)
  assert ranking.agreement_markdown([]) == ""
