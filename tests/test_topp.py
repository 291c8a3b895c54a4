"""Top-p against an independent float64 NumPy implementation of both semantics."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from remdm_jax import top_p_filter


def _numpy_top_p(probs, p, mode):
  out = np.zeros_like(probs)
  for r, row in enumerate(probs):
    order = np.argsort(-row, kind="stable")
    cum = np.cumsum(row[order])
    if mode == "reference":
      keep = cum <= p
    else:
      keep = (cum - row[order]) < p
    keep[0] = True
    out[r, order[keep]] = row[order[keep]]
  return out / out.sum(-1, keepdims=True)


def _random_probs(rows, vocab, seed, scale=3.0):
  logits = np.random.default_rng(seed).standard_normal((rows, vocab)) * scale
  return np.asarray(jax.nn.softmax(jnp.asarray(logits, jnp.float32)), np.float64)


@pytest.mark.parametrize("impl", ["sort", "bisect", "radix"])
@pytest.mark.parametrize("mode", ["reference", "standard"])
@pytest.mark.parametrize("p", [0.1, 0.5, 0.9, 1.0])
def test_matches_numpy(impl, mode, p):
  probs = _random_probs(64, 1000, seed=int(p * 10))
  got = jax.jit(lambda x: top_p_filter(x, jnp.float32(p), mode=mode, impl=impl))(
      jnp.asarray(probs, jnp.float32))
  assert got.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(got), _numpy_top_p(probs, p, mode), atol=2e-6)


@pytest.mark.parametrize("mode", ["reference", "standard"])
def test_bisect_equals_sort_at_large_vocab(mode):
  probs = jnp.asarray(_random_probs(8, 50_258, seed=7, scale=2.0), jnp.float32)
  a = top_p_filter(probs, jnp.float32(0.9), mode=mode, impl="sort")
  b = top_p_filter(probs, jnp.float32(0.9), mode=mode, impl="bisect")
  np.testing.assert_array_equal(np.asarray(a) > 0, np.asarray(b) > 0)


@pytest.mark.parametrize("mode", ["reference", "standard"])
def test_radix_matches_float64_away_from_rounding_ties(mode):
  """At V = 50258 the kept set equals the float64 one on every row whose cumulative masses
  next to the boundary are further than 2e-7 from p (closer, float32 summation order decides,
  for every implementation alike: misses of sort, bisect and radix were all within 6e-8)."""
  probs = _random_probs(64, 50_258, seed=11, scale=2.0)
  p = np.float32(0.9)
  got = np.asarray(top_p_filter(jnp.asarray(probs, jnp.float32), p, mode=mode, impl="radix"))
  ordered = -np.sort(-probs, axis=1)
  cum = np.cumsum(ordered, axis=1)
  kept = np.maximum(((cum <= p) if mode == "reference" else (cum - ordered < p)).sum(1), 1)
  rows = np.arange(64)
  margin = np.min(np.abs(cum[rows[:, None], kept[:, None] + np.array([-2, -1, 0])] - p), axis=1)
  clear = margin > 2e-7
  assert clear.sum() >= 56
  np.testing.assert_array_equal((got > 0).sum(1)[clear], kept[clear])


def test_radix_handles_ties_zeros_and_extremes():
  """Same sets as bisect (both decide by the mass of all tokens >= a value, so tied tokens go
  together); sort differs only where a tie group crosses p in reference mode."""
  probs = jnp.array([[0.25, 0.25, 0.25, 0.25, 0.0],     # ties at the threshold: all kept
                     [1.0, 0.0, 0.0, 0.0, 0.0],         # one-hot
                     [0.6, 0.1, 0.1, 0.1, 0.1]], jnp.float32)
  for p in (0.3, 0.5, 0.95, 1.0):
    for mode in ("reference", "standard"):
      a = top_p_filter(probs, jnp.float32(p), mode=mode, impl="bisect")
      b = top_p_filter(probs, jnp.float32(p), mode=mode, impl="radix")
      np.testing.assert_array_equal(np.asarray(a) > 0, np.asarray(b) > 0, err_msg=(p, mode))
  one_hot = top_p_filter(probs[1:2], jnp.float32(0.5), impl="radix")
  np.testing.assert_array_equal(np.asarray(one_hot), [[1.0, 0.0, 0.0, 0.0, 0.0]])
  dropped = top_p_filter(probs[2:], jnp.float32(0.95), mode="reference", impl="radix")
  np.testing.assert_array_equal(np.asarray(dropped) > 0, [[True] + [False] * 4])


def test_reference_drops_crossing_token_standard_keeps_it():
  probs = jnp.array([[0.5, 0.3, 0.2]], jnp.float32)
  ref = top_p_filter(probs, jnp.float32(0.7), mode="reference")
  std = top_p_filter(probs, jnp.float32(0.7), mode="standard")
  np.testing.assert_allclose(np.asarray(ref), [[1.0, 0.0, 0.0]])
  np.testing.assert_allclose(np.asarray(std), [[0.625, 0.375, 0.0]])


def test_top_token_always_kept():
  probs = jnp.array([[0.95, 0.05]], jnp.float32)
  for impl in ("sort", "bisect", "radix"):
    out = top_p_filter(probs, jnp.float32(0.5), impl=impl)
    np.testing.assert_allclose(np.asarray(out), [[1.0, 0.0]])


def test_bad_names():
  with pytest.raises(ValueError, match="unknown top_p impl 'fast'"):
    top_p_filter(jnp.ones((1, 2)) / 2, jnp.float32(0.5), impl="fast")
