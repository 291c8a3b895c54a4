"""SUBS, the Bernoulli and categorical draws: exactness and tail precision."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from remdm_jax import diffusion
from remdm_jax.sampling import posterior


def test_subs_excludes_mask_and_is_float32():
  logits = jnp.array([[[1.0, 2.0, 3.0, 9.0]]], jnp.bfloat16)
  log_probs = jax.jit(diffusion.subs_log_probs, static_argnums=1)(logits, 3, jnp.float32(2.0))
  assert log_probs.dtype == jnp.float32
  expected = np.array([1.0, 2.0, 3.0]) / 2.0
  expected = expected - np.log(np.sum(np.exp(expected)))
  np.testing.assert_allclose(np.asarray(log_probs[0, 0, :3]), expected, rtol=1e-6)
  assert np.isneginf(np.asarray(log_probs[0, 0, 3]))


def test_bernoulli_honours_one_in_a_million():
  """p = 1e-6 over N = 1e8 draws: expect 100 hits, sd 10; bound 5 sd (seeded)."""
  p = jnp.full((10_000_000,), 1e-6, jnp.float32)
  count = jax.jit(lambda k: jnp.sum(jax.vmap(
      lambda kk: jnp.sum(posterior.bernoulli(kk, p)))(jax.random.split(k, 10))))(
          jax.random.key(0))
  assert abs(int(count) - 100) < 50


def _hits(bernoulli, p: float, key) -> int:
  """Hits of `bernoulli(key, p [1e7])` over 100 folded keys: N = 1e9 draws."""
  draws = lambda k: jnp.sum(bernoulli(k, jnp.full((10_000_000,), p, jnp.float32)))
  return int(jax.jit(lambda k: jax.lax.fori_loop(
      0, 100, lambda i, c: c + draws(jax.random.fold_in(k, i)), 0))(key))


@pytest.mark.slow
def test_bernoulli_has_no_float32_uniform_bias():
  """p = 1.01 * 2^-23 over N = 1e9 draws: 120.4 hits expected (sd 11.0); accept 120 +- 50
  (4.5 sd, seeded). A float32 uniform (23 random bits) is below p with probability 2^-22,
  i.e. 238 hits expected: the same bound rejects it, as checked here."""
  p = 1.01 * 2.0 ** -23
  naive = lambda key, probs: jax.random.uniform(key, probs.shape, jnp.float32) < probs
  assert abs(_hits(posterior.bernoulli, p, jax.random.key(0)) - 120.4) < 50
  assert abs(_hits(naive, p, jax.random.key(0)) - 120.4) >= 50


@pytest.mark.parametrize("p", [0.0, 1.0, 0.3])
def test_bernoulli_edges_and_mean(p):
  draws = posterior.bernoulli(jax.random.key(1), jnp.full((200_000,), p, jnp.float32))
  assert draws.dtype == jnp.bool_
  mean = float(jnp.mean(draws))
  assert abs(mean - p) <= 5 * np.sqrt(p * (1 - p) / 200_000) + 1e-12


def test_draw_categorical_exact_on_small_distribution():
  """Chi-square of 200k draws from a 7-way distribution (V not a square, so padding is used);
  the 0.9999 quantile of chi2(6) is 27.9."""
  probs = jnp.array([0.4, 0.25, 0.15, 0.1, 0.06, 0.04, 0.0], jnp.float32)
  rows = jnp.broadcast_to(probs, (200_000, 7))
  ids, chosen = jax.jit(posterior.draw_categorical)(jax.random.key(2), rows)
  assert ids.dtype == jnp.int32 and chosen.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(chosen), np.asarray(probs)[np.asarray(ids)])
  counts = np.bincount(np.asarray(ids), minlength=7)
  assert counts[6] == 0
  expected = 200_000 * np.asarray(probs[:6], np.float64)
  chi2 = np.sum((counts[:6] - expected) ** 2 / expected)
  assert chi2 < 27.9


def _long_tail(vocab=50_258, head=10, tail_mass=3e-3):
  probs = np.full(vocab, tail_mass / (vocab - head))
  probs[:head] = (1 - tail_mass) / head
  return probs


def _draw_many(draw, probs, num_chunks=30, chunk=1000):
  rows = jnp.broadcast_to(jnp.asarray(probs, jnp.float32), (chunk, probs.shape[0]))
  keys = jax.random.split(jax.random.key(3), num_chunks)
  ids = jax.jit(lambda ks: jax.lax.map(lambda k: draw(k, rows), ks))(keys)
  return np.asarray(ids).reshape(-1)


def _tail_stats(ids, probs, head=10):
  """Tail hits and a Monte Carlo entropy estimate mean(-log p(x)) with its standard error."""
  nll = -np.log(probs[ids])
  return int(np.sum(ids >= head)), nll.mean(), nll.std() / np.sqrt(ids.size)


def test_draw_categorical_keeps_the_long_tail():
  """V = 50258: 10 head tokens share 0.997, each tail token has 6e-8. With N = 30k draws the
  tail count is Binomial(30k, 0.003) (mean 90, sd 9.5; bound 4 sd) and mean(-log p(x)) is an
  unbiased estimate of the entropy (bound 4 standard errors)."""
  probs = _long_tail()
  entropy = -np.sum(probs * np.log(probs))
  ids = _draw_many(lambda k, rows: posterior.draw_categorical(k, rows)[0], probs)
  hits, entropy_est, se = _tail_stats(ids, probs)
  assert abs(hits - 90) < 4 * 9.5
  assert abs(entropy_est - entropy) < 4 * se


@pytest.mark.slow
def test_float32_gumbel_loses_the_tail_this_test_detects():
  """The same check fails for single-level float32 Gumbel-max, so it has the power to fail."""
  probs = _long_tail()
  ids = _draw_many(lambda k, rows: jax.random.categorical(k, jnp.log(rows), mode="low"), probs)
  hits, _, _ = _tail_stats(ids, probs)
  assert hits < 90 - 4 * 9.5


def test_transition_probs_formula():
  class Row:
    unmask_base = jnp.float32(0.1)
    unmask_per_sigma = jnp.float32(2.0)
  sigma = jnp.array([[0.0, 0.1, 0.2]], jnp.float32)
  p_remask, p_unmask = posterior.transition_probs(Row, sigma)
  np.testing.assert_allclose(np.asarray(p_remask), [[0.0, 0.1, 0.2]])
  np.testing.assert_allclose(np.asarray(p_unmask), [[0.1, 0.3, 0.5]], rtol=1e-6)
