"""The DiT against an independent float64 NumPy forward pass written from the brief."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from remdm_jax.weights.convert import convert_tensors
from remdm_jax.models import DiT, DiTConfig

SMALL = DiTConfig(vocab_size=13, hidden=32, heads=4, blocks=2, cond_dim=8, max_length=32,
                  time_conditioning=True)


def released_tensors(cfg, seed=0):
  """Random float32 weights under the released key names and shapes."""
  rng = np.random.default_rng(seed)
  d, c, v = cfg.hidden, cfg.cond_dim, cfg.vocab_size
  shapes = {"vocab_embed.embedding": (v, d), "sigma_map.mlp.0.weight": (c, 256),
            "sigma_map.mlp.0.bias": (c,), "sigma_map.mlp.2.weight": (c, c),
            "sigma_map.mlp.2.bias": (c,), "output_layer.norm_final.weight": (d,),
            "output_layer.linear.weight": (v, d), "output_layer.linear.bias": (v,),
            "output_layer.adaLN_modulation.weight": (2 * d, c),
            "output_layer.adaLN_modulation.bias": (2 * d,)}
  for i in range(cfg.blocks):
    shapes |= {f"blocks.{i}.norm1.weight": (d,), f"blocks.{i}.norm2.weight": (d,),
               f"blocks.{i}.attn_qkv.weight": (3 * d, d), f"blocks.{i}.attn_out.weight": (d, d),
               f"blocks.{i}.mlp.0.weight": (4 * d, d), f"blocks.{i}.mlp.0.bias": (4 * d,),
               f"blocks.{i}.mlp.2.weight": (d, 4 * d), f"blocks.{i}.mlp.2.bias": (d,),
               f"blocks.{i}.adaLN_modulation.weight": (6 * d, c),
               f"blocks.{i}.adaLN_modulation.bias": (6 * d,)}
  out = {}
  for name, shape in shapes.items():
    scale = 1.0 if len(shape) == 1 and "norm" in name else 1.0 / np.sqrt(shape[-1])
    base = 1.0 if "norm" in name else 0.0
    out["backbone." + name] = (base + scale * rng.standard_normal(shape)).astype(np.float32)
  head_dim = d // cfg.heads
  out["backbone.rotary_emb.inv_freq"] = (
      1.0 / 10_000 ** (np.arange(0, head_dim, 2) / head_dim)).astype(np.float32)
  return out


def numpy_forward(w, tokens, sigma, cfg, causal=False):
  """float64 forward pass of brief section 8, from released tensors (optionally masked)."""
  w = {k.removeprefix("backbone."): v.astype(np.float64) for k, v in w.items()}
  silu = lambda x: x / (1 + np.exp(-x))
  gelu = lambda x: 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))
  def lin(x, name, bias=True):
    y = x @ w[name + ".weight"].T
    return y + w[name + ".bias"] if bias else y
  def ln(x, weight):
    mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + 1e-5) * weight
  sigma = sigma if cfg.time_conditioning else np.zeros_like(sigma)
  k = np.arange(128)
  args = sigma[:, None] * np.exp(-np.log(10_000) * k / 128)[None]
  c = silu(lin(silu(lin(np.concatenate([np.cos(args), np.sin(args)], -1),
                        "sigma_map.mlp.0")), "sigma_map.mlp.2"))
  b, l = tokens.shape
  d, h = cfg.hidden, cfg.heads
  dh = d // h
  x = w["vocab_embed.embedding"][tokens]
  inv = 1.0 / 10_000 ** (np.arange(0, dh, 2) / dh)
  ang = np.arange(l)[:, None] * inv[None]
  cos, sin = np.cos(np.concatenate([ang, ang], -1)), np.sin(np.concatenate([ang, ang], -1))
  def rot(q):   # [B, L, H, dh], pairs (j, j + dh/2)
    q1, q2 = q[..., :dh // 2], q[..., dh // 2:]
    return q * cos[None, :, None] + np.concatenate([-q2, q1], -1) * sin[None, :, None]
  for i in range(cfg.blocks):
    p = f"blocks.{i}"
    mods = np.split(lin(c, p + ".adaLN_modulation"), 6, axis=-1)
    sh1, sc1, g1, sh2, sc2, g2 = (m[:, None] for m in mods)
    hid = ln(x, w[p + ".norm1.weight"]) * (1 + sc1) + sh1
    qkv = lin(hid, p + ".attn_qkv", bias=False).reshape(b, l, 3, h, dh)
    q, kk, v = rot(qkv[:, :, 0]), rot(qkv[:, :, 1]), qkv[:, :, 2]
    s = np.einsum("bqhd,bkhd->bhqk", q, kk) / np.sqrt(dh)
    if causal:
      s = np.where(np.tril(np.ones((l, l), bool)), s, -np.inf)
    s = np.exp(s - s.max(-1, keepdims=True))
    att = np.einsum("bhqk,bkhd->bqhd", s / s.sum(-1, keepdims=True), v).reshape(b, l, d)
    x = x + g1 * lin(att, p + ".attn_out", bias=False)
    hid = ln(x, w[p + ".norm2.weight"]) * (1 + sc2) + sh2
    x = x + g2 * lin(gelu(lin(hid, p + ".mlp.0")), p + ".mlp.2")
  shift, scale = np.split(lin(c, "output_layer.adaLN_modulation"), 2, axis=-1)
  hid = ln(x, w["output_layer.norm_final.weight"]) * (1 + scale[:, None]) + shift[:, None]
  return lin(hid, "output_layer.linear")


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
