"""Shifted logits (`Denoiser.shift`): a model whose row `p - 1` predicts position `p` (Dream-class
models, the GPT-2 MDMs of Ye et al. 2024) samples exactly as its unshifted twin.

The toy model is a bag model with an explicit key-value cache: the cache holds one vector per
position, `c_j = tanh(E2[z_j] + P2[j])`, and row `q`'s features are
`tanh(E[z_q] + P[q]) + mean_j c_j`; the head is linear. Its shifted twin computes, at row
`q`, what the toy computes at row `q + 1` (its cache is the same), so with `shift=1` every
position's logits are the toy's. Position 0 is always a prompt token (Dream's convention
gives position 0 the logits of row 0), so the twin's tokens must equal the toy's for every
decoder and cache, with the same key.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import remdm_jax
from remdm_jax import Denoiser
from remdm_jax.denoiser import shift_rows

V, MASK, L, D = 7, 6, 12, 8


def _params(seed: int = 0) -> dict:
  keys = jax.random.split(jax.random.key(seed), 5)
  return dict(E=jax.random.normal(keys[0], (V, D)), P=jax.random.normal(keys[1], (L, D)),
              E2=jax.random.normal(keys[2], (V, D)), P2=jax.random.normal(keys[3], (L, D)),
              W=2.0 * jax.random.normal(keys[4], (D, V)))


def _own_rows(params, tokens, positions):
  """`tanh(E[z] + P[position])`, `[B, W, D]`."""
  return jnp.tanh(params["E"][tokens] + params["P"][positions])


def _cache_rows(params, tokens, positions):
  return jnp.tanh(params["E2"][tokens] + params["P2"][positions])


@dataclasses.dataclass(frozen=True)
class BagModel:
  """The toy (`lead=0`) or its twin (`lead=1`: row `q` is the toy's row `q + 1`; the last row
  repeats its own token, a row that predicts nothing inside the sequence)."""

  lead: int

  def _ahead(self, tokens, positions):
    if not self.lead:
      return tokens, positions
    return (jnp.concatenate([tokens[:, 1:], tokens[:, -1:]], axis=1),
            jnp.minimum(jnp.concatenate([positions[:, 1:], positions[:, -1:] + 1], axis=1),
                        L - 1))

  def prefill(self, params, z):
    positions = jnp.broadcast_to(jnp.arange(L), z.shape)
    cache = _cache_rows(params, z, positions)                        # [B, L, D]
    own = _own_rows(params, *self._ahead(z, positions))
    return own + jnp.mean(cache, axis=1, keepdims=True), cache

  def cached(self, params, z_w, positions, fresh, cache):
    at = jnp.where(fresh, positions, L)                               # dropped when not fresh
    cache = cache.at[jnp.arange(z_w.shape[0])[:, None], at].set(
        _cache_rows(params, z_w, positions), mode="drop")
    own = _own_rows(params, *self._ahead(z_w, positions))
    return own + jnp.mean(cache, axis=1, keepdims=True)

  def features(self, params, z, t):
    return self.prefill(params, z)[0]

  def head(self, params, h, t):
    return h @ params["W"]

  def logits(self, params, z, t):
    return self.head(params, self.features(params, z, t), t)


def _denoiser(lead: int, shift: int) -> Denoiser:
  model = BagModel(lead)
  return Denoiser(model.logits, _params(), features_apply=model.features,
                  head_apply=model.head, reads_t=False, prefill_apply=model.prefill,
                  cached_apply=model.cached, shift=shift)


def _prompt():
  """Rows with prompts of 1, 2 and 3 tokens (position 0 always a prompt token)."""
  rows = np.full((3, L), MASK, np.int32)
  for b, n in enumerate((1, 2, 3)):
    rows[b, :n] = np.arange(n) % MASK
  return jnp.asarray(rows)


SLOW = dict(marks=pytest.mark.slow)
CONFIGS = [
    pytest.param(dict(strategy="mdlm", num_steps=6), id="mdlm split head", **SLOW),
    pytest.param(dict(strategy="cap", eta=0.05, num_steps=8), id="cap", **SLOW),
    pytest.param(dict(strategy="topk", num_steps=6), id="topk (full logits)", **SLOW),
    pytest.param(dict(strategy="llada", num_steps=2, block_length=4), id="llada uncached",
                 **SLOW),
    pytest.param(dict(strategy="llada", num_steps=2, block_length=4, kv_cache="prefix"),
                 id="llada prefix", **SLOW),
    pytest.param(dict(strategy="llada", num_steps=2, block_length=4, kv_cache="dual"),
                 id="llada dual"),
    pytest.param(dict(strategy="llada", num_steps=3, block_length=3, kv_cache="dual",
                      remasking="random", temperature=1.0), id="llada dual random T=1", **SLOW),
    pytest.param(dict(strategy="llada", num_steps=2, block_length=4, kv_cache="prefix",
                      remdm_number=1, remdm_start=1), id="llada prefix remdm", **SLOW),
]


def _tokens(denoiser, options, seed=0):
  cfg = remdm_jax.sampler_config(**options)
  return np.asarray(remdm_jax.sample(jax.random.key(seed), denoiser, cfg, batch_size=3,
                                     seq_len=L, mask_id=MASK, prompt=_prompt()))


@pytest.mark.parametrize("options", CONFIGS)
def test_shifted_twin_gives_identical_tokens(options):
  toy = _tokens(_denoiser(lead=0, shift=0), options)
  assert (toy != MASK).all()
  for seed in (0, 1):
    np.testing.assert_array_equal(_tokens(_denoiser(lead=1, shift=1), options, seed),
                                  _tokens(_denoiser(lead=0, shift=0), options, seed))


def test_twin_without_its_shift_differs():
  """The check can fail: the twin read as unshifted samples other tokens."""
  options = dict(strategy="llada", num_steps=2, block_length=4, kv_cache="dual")
  assert (_tokens(_denoiser(lead=1, shift=0), options)
          != _tokens(_denoiser(lead=0, shift=0), options)).any()


def test_aligned_logits_and_feature_rows():
  """`denoiser(z, t)` moves the rows into place (position 0 keeps row 0) and `feature_rows`
  names the row that predicts each position."""
  twin, toy = _denoiser(lead=1, shift=1), _denoiser(lead=0, shift=0)
  z = _prompt().at[:, 5].set(2)
  t = jnp.ones((3,))
  np.testing.assert_allclose(twin(z, t)[:, 1:], toy(z, t)[:, 1:], rtol=1e-6, atol=1e-6)
  raw = twin.apply(twin.params, z, t)
  np.testing.assert_array_equal(twin(z, t), shift_rows(raw, 1))
  np.testing.assert_array_equal(twin(z, t)[:, 0], raw[:, 0])
  np.testing.assert_array_equal(twin.feature_rows(jnp.asarray([0, 1, 5])), [0, 0, 4])


@pytest.mark.parametrize("shift", [2, -1, True, 0.5])
def test_shift_is_zero_or_one(shift):
  with pytest.raises(ValueError, match="Denoiser.shift must be 0 or 1"):
    dataclasses.replace(_denoiser(0, 0), shift=shift)


def test_guidance_of_a_shifted_denoiser_uses_aligned_logits():
  """Classifier-free guidance combines the aligned logits, so guiding the twin equals
  guiding the toy."""
  z, t = _prompt(), jnp.ones((3,))
  twin = remdm_jax.classifier_free_guidance(_denoiser(1, 1), _denoiser(1, 1), 1.5)
  toy = remdm_jax.classifier_free_guidance(_denoiser(0, 0), _denoiser(0, 0), 1.5)
  assert twin.shift == 0
  np.testing.assert_allclose(twin(z, t)[:, 1:], toy(z, t)[:, 1:], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kv_cache", ["dual", "prefix"])
def test_shifted_twin_decodes_a_queue_alike(kv_cache):
  """The slot decoder (rows at their own steps, the rows starting a block prefilled beside
  the others' cached windows) gives the twin the toy's tokens, and the batch decoder's."""
  cfg = remdm_jax.sampler_config("llada", num_steps=2, block_length=4, kv_cache=kv_cache,
                                 threshold=0.5)
  run = lambda den: remdm_jax.make_slot_decoder(den, cfg, slots=2, seq_len=L, mask_id=MASK)(
      jax.random.key(0), _prompt()).tokens
  toy = run(_denoiser(lead=0, shift=0))
  np.testing.assert_array_equal(run(_denoiser(lead=1, shift=1)), toy)
  np.testing.assert_array_equal(toy, _tokens(_denoiser(lead=0, shift=0),
                                             dict(strategy="llada", num_steps=2, block_length=4,
                                                  kv_cache=kv_cache, threshold=0.5)))
