"""The DiT against an independent float64 NumPy forward pass written from the brief."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from remdm_jax.weights.convert import convert_tensors
from remdm_jax.models import DiT, DiTConfig
from references.dit import SMALL, numpy_forward, released_tensors


@pytest.mark.parametrize("length", [1, 7, 32])
@pytest.mark.parametrize("sigma_value", [0.0, 2.5])
def test_logits_match_numpy_reference(length, sigma_value):
  weights = released_tensors(SMALL)
  model = convert_tensors(weights, SMALL)
  tokens = np.random.default_rng(length).integers(0, SMALL.vocab_size, (3, length))
  sigma = np.array([sigma_value, sigma_value / 2, 0.1])
  got = jax.jit(lambda t, s: model(t, s))(jnp.asarray(tokens, jnp.int32),
                                          jnp.asarray(sigma, jnp.float32))
  assert got.dtype == jnp.float32 and got.shape == (3, length, SMALL.vocab_size)
  want = numpy_forward(weights, tokens, sigma, SMALL)
  assert np.max(np.abs(np.asarray(got) - want)) < 1e-4 * np.max(np.abs(want))


def test_time_conditioning_off_ignores_sigma():
  cfg = dataclasses.replace(SMALL, time_conditioning=False)
  model = convert_tensors(released_tensors(cfg), cfg)
  tokens = jnp.zeros((2, 5), jnp.int32)
  a, b = model(tokens, jnp.zeros((2,))), model(tokens, jnp.full((2,), 3.0))
  np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_bfloat16_compute_stays_close_and_returns_float32():
  weights = released_tensors(SMALL)
  cfg16 = dataclasses.replace(SMALL, dtype="bfloat16")
  tokens, sigma = jnp.ones((2, 16), jnp.int32), jnp.full((2,), 0.5)
  ref = convert_tensors(weights, SMALL)(tokens, sigma)
  low = convert_tensors(weights, cfg16)(tokens, sigma)
  assert low.dtype == jnp.float32
  assert float(jnp.max(jnp.abs(low - ref))) < 0.05 * float(jnp.max(jnp.abs(ref)))


def test_fresh_model_is_zero_initialised():
  model = DiT(SMALL, rngs=nnx.Rngs(0))
  np.testing.assert_array_equal(
      np.asarray(model(jnp.ones((2, 8), jnp.int32), jnp.zeros((2,)))), 0.0)
  assert not np.any(np.asarray(model.blocks[0].adaLN_modulation.kernel[...]))


def test_dropout_only_with_rngs():
  model = convert_tensors(released_tensors(SMALL), SMALL)
  tokens, sigma = jnp.ones((2, 8), jnp.int32), jnp.zeros((2,))
  a, b = model(tokens, sigma), model(tokens, sigma)
  np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  c = model(tokens, sigma, rngs=nnx.Rngs(dropout=1))
  assert np.any(np.asarray(a) != np.asarray(c))


def test_full_size_parameter_count_is_the_release():
  """12 x 768, 12 heads, cond 128, V = 50258: counted from the released shapes."""
  cfg = DiTConfig()
  d, c, v = 768, 128, 50_258
  block = 3 * d * d + d * d + 2 * 4 * d * d + 4 * d + d + (c * 6 * d + 6 * d) + 2 * d
  released = v * d + (256 * c + c + c * c + c) + 12 * block + d + (d * v + v) + (c * 2 * d + 2 * d)
  abstract = nnx.eval_shape(lambda: DiT(cfg, rngs=nnx.Rngs(0)))
  count = sum(x.size for x in jax.tree.leaves(nnx.state(abstract, nnx.Param)))
  assert count == released == 169_627_218


def test_bad_config_and_long_input():
  with pytest.raises(ValueError, match="hidden / heads must be an even integer"):
    DiTConfig(hidden=30, heads=4)
  model = DiT(SMALL, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="sequence length must be <= max_length=32, got 33"):
    model(jnp.zeros((1, 33), jnp.int32), jnp.zeros((1,)))


def _without_adaln(weights, cfg):
  """Causal-model tensors, and the same network written with identity adaLN for NumPy."""
  causal = {k: v for k, v in weights.items() if "adaLN" not in k and "sigma_map" not in k}
  identity = dict(weights)
  for key in [k for k in weights if "adaLN_modulation" in k]:
    identity[key] = np.zeros_like(weights[key])
  for i in range(cfg.blocks):   # gates (chunks 3 and 6 of 6) equal 1
    bias = identity[f"backbone.blocks.{i}.adaLN_modulation.bias"].reshape(6, -1)
    bias[2] = bias[5] = 1.0
  return causal, identity


def test_causal_variant_matches_numpy_with_causal_mask():
  cfg = dataclasses.replace(SMALL, causal=True)
  causal, identity = _without_adaln(released_tensors(SMALL), SMALL)
  model = convert_tensors(causal, cfg)
  assert model.sigma_map is None and model.blocks[0].adaLN_modulation is None
  tokens = np.random.default_rng(0).integers(0, SMALL.vocab_size, (2, 9))
  got = np.asarray(model(jnp.asarray(tokens, jnp.int32), jnp.zeros((2,))))
  want = numpy_forward(identity, tokens, np.zeros(2), SMALL, causal=True)
  assert np.max(np.abs(got - want)) < 1e-4 * np.max(np.abs(want))
  changed = tokens.copy()
  changed[:, 5] = (changed[:, 5] + 1) % SMALL.vocab_size
  got2 = np.asarray(model(jnp.asarray(changed, jnp.int32), jnp.zeros((2,))))
  np.testing.assert_array_equal(got[:, :5], got2[:, :5])   # the past ignores the future
  assert np.any(got[:, 5:] != got2[:, 5:])


@pytest.mark.parametrize("tokens,sigma,match", [
    (jnp.zeros((2, 4), jnp.float32), jnp.zeros((2,)), r"tokens must be \[B, L\] integer ids"),
    (jnp.zeros((4,), jnp.int32), jnp.zeros((1,)), r"tokens must be \[B, L\] integer ids"),
    (jnp.zeros((2, 4), jnp.int32), jnp.zeros((3,)), r"sigma must be \[B\] = \[2\], got \[3\]"),
])
def test_bad_inputs_are_named(tokens, sigma, match):
  model = DiT(DiTConfig(vocab_size=7, hidden=8, heads=2, blocks=1, cond_dim=4, max_length=8),
              rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match=match):
    model(tokens, sigma)


@pytest.mark.parametrize("kwargs,match", [
    (dict(hidden=8.0), "hidden must be an integer, got 8.0"),
    (dict(dropout=float("nan")), "dropout must be a finite number"),
    (dict(dtype="float64"), "unknown dtype 'float64'"),
    (dict(causal="no"), "causal must be true or false"),
])
def test_bad_config_fields_are_named(kwargs, match):
  with pytest.raises(ValueError, match=match):
    DiTConfig(**kwargs)


def test_wrappers_refuse_the_wrong_kind_of_model():
  from remdm_jax.models import as_denoiser, as_evaluator
  small = dict(vocab_size=7, hidden=8, heads=2, blocks=1, cond_dim=4, max_length=8)
  causal = DiT(DiTConfig(causal=True, **small), rngs=nnx.Rngs(0))
  masked = DiT(DiTConfig(**small), rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="as_denoiser needs a masked diffusion DiT"):
    as_denoiser(causal)
  with pytest.raises(ValueError, match="as_evaluator needs a causal DiT"):
    as_evaluator(masked)
