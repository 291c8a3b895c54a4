"""The library as a researcher meets it: compile once, trajectories, one-call losses, small
conveniences."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import remdm_jax
from remdm_jax import sampler_config
from remdm_jax.training import losses
from remdm_jax.models import DiT, DiTConfig, as_denoiser, denoiser_and_params

from references.mixture import MASK_ID


def _counted_apply():
  """A tiny parametrised denoiser over ids 0..3 (4 is the mask) that counts its traces."""
  traces = []

  def apply(params, z, t):
    traces.append(1)
    h = params["embed"][z]                                               # [B, L, H]
    return (h + jnp.mean(h, axis=1, keepdims=True)) @ params["out"] * (1.0 + t[:, None, None])

  def params(seed):
    k1, k2 = jax.random.split(jax.random.key(seed))
    return {"embed": jax.random.normal(k1, (5, 8)), "out": jax.random.normal(k2, (8, 5))}

  return apply, params, traces


def test_make_sampler_compiles_once_for_new_keys_params_prompts_and_plans():
  apply, params, traces = _counted_apply()
  cfg = sampler_config("cap", eta=0.05, num_steps=8, top_p=0.9)
  run = remdm_jax.make_sampler(remdm_jax.Denoiser(apply), cfg, batch_size=4, seq_len=6,
                               mask_id=MASK_ID)
  first = run(jax.random.key(0), params(0))
  after_first = len(traces)
  second = run(jax.random.key(1), params(1))
  prompt = np.full((4, 6), MASK_ID, np.int32)
  prompt[:, 0] = 2
  prompted = run(jax.random.key(1), params(1), prompt)
  swept = run(jax.random.key(1), params(1), prompt,
              plan=remdm_jax.build_plan(cfg.with_options(eta=0.1))[0])
  assert len(traces) == after_first + 1    # only the prompt check's abstract evaluation
  assert np.any(np.asarray(first) != np.asarray(second))
  assert np.all(np.asarray(prompted)[:, 0] == 2) and np.all(np.asarray(swept)[:, 0] == 2)
  # the same tokens as the plain sampler on the same parameters
  plain = remdm_jax.sample(jax.random.key(1), lambda z, t: apply(params(1), z, t), cfg,
                           batch_size=4, seq_len=6, mask_id=MASK_ID)
  np.testing.assert_array_equal(second, plain)


def test_direct_sample_calls_reuse_the_compiled_run():
  apply, params, traces = _counted_apply()
  fixed = params(0)
  denoiser = lambda z, t: apply(fixed, z, t)
  cfg = sampler_config("loop", num_steps=16)
  outs = [remdm_jax.sample(jax.random.key(i), denoiser, cfg, batch_size=2, seq_len=6,
                           mask_id=MASK_ID) for i in range(3)]
  after_one = len(traces)
  remdm_jax.sample(jax.random.key(5), denoiser, cfg, batch_size=2, seq_len=6, mask_id=MASK_ID)
  assert len(traces) == after_one
  jitted = jax.jit(lambda k: remdm_jax.sample(k, denoiser, cfg, batch_size=2, seq_len=6,
                                              mask_id=MASK_ID))
  np.testing.assert_array_equal(outs[1], jitted(jax.random.key(1)))


def test_denoiser_and_params_match_as_denoiser():
  model = DiT(DiTConfig(vocab_size=7, hidden=16, heads=2, blocks=1, cond_dim=8, max_length=6,
                        time_conditioning=True), rngs=__import__("flax").nnx.Rngs(0))
  den, params = denoiser_and_params(model)
  z, t = jnp.zeros((2, 6), jnp.int32), jnp.array([0.3, 0.9])
  np.testing.assert_array_equal(den.apply(params, z, t), as_denoiser(model)(z, t))
  assert den.reads_t and den.vocab_size == 7 and den.is_split
  with pytest.raises(ValueError, match=r"this one reads t \(reads_t=True"):
    remdm_jax.make_sampler(den, sampler_config(cache=True), batch_size=1, seq_len=6,
                           mask_id=6)


@pytest.mark.parametrize("shape", [(6,), (1, 6)])
def test_a_single_prompt_broadcasts_to_the_batch(shape, mixture):
  row = np.full(6, MASK_ID, np.int32)
  row[0], row[3] = 1, 0
  cfg = sampler_config("cap", eta=0.05, num_steps=8)
  full = remdm_jax.sample(jax.random.key(0), mixture, cfg, batch_size=3, seq_len=6,
                          mask_id=MASK_ID, prompt=np.tile(row, (3, 1)))
  one = remdm_jax.sample(jax.random.key(0), mixture, cfg, batch_size=3, seq_len=6,
                         mask_id=MASK_ID, prompt=row.reshape(shape))
  np.testing.assert_array_equal(full, one)
  with pytest.raises(ValueError, match=r"prompt must have shape .* \[1, 6\] or \[6\], got \[2, 6\]"):
    remdm_jax.sample(jax.random.key(0), mixture, cfg, batch_size=3, seq_len=6,
                     mask_id=MASK_ID, prompt=np.tile(row, (2, 1)))


def test_traced_config_values_point_to_the_plan():
  with pytest.raises(TypeError, match=r"eta got a traced value .* pass plan as an argument"):
    jax.jit(lambda eta: remdm_jax.sampler_config("cap", eta=eta).num_steps)(0.1)


def test_trajectory_length_and_render(mixture):
  cfg = sampler_config("dfm", num_steps=16)
  trajectory = remdm_jax.sample(jax.random.key(2), mixture, cfg, batch_size=2, seq_len=6,
                                mask_id=MASK_ID, return_trajectory=True)
  n = remdm_jax.build_plan(cfg)[0].table.t.shape[0]
  assert n > 16 and trajectory.steps.shape == (n, 2, 6) and trajectory.t.shape == (n,)
  tok = type("Digits", (), {"mask_id": MASK_ID, "decode": lambda self, ids: "".join(
      "abcd"[i] for i in ids)})()
  text = remdm_jax.sampling.trajectory.render(trajectory, tok, example=1, every=5)
  lines = text.splitlines()
  assert lines[0].startswith("step    0") and "|______|" in lines[0]
  assert lines[-1] == "final" + " " * 20 + "|" + "".join(
      "abcd"[i] for i in np.asarray(trajectory.tokens)[1]) + "|"
  assert len(lines) == len(range(0, n, 5)) + (1 if (n - 1) % 5 else 0) + 1
  with pytest.raises(ValueError, match=r"example must be in \[0, 2\), got 2"):
    remdm_jax.sampling.trajectory.render(trajectory, tok, example=2)


def _toy_denoiser():
  w = jax.random.normal(jax.random.key(0), (5, 5))
  return lambda z, t: w[z] * (1.0 + t[:, None, None])


def test_ar_loss_and_a_few_optax_steps_lower_the_loss():
  x = jnp.tile(jnp.array([[0, 1, 2, 3, 0, 1, 2, 3]]), (4, 1))
  params = {"w": jnp.zeros((5, 5))}
  loss_fn = lambda p: losses.mdlm_loss(lambda z, t: p["w"][z], x, jax.random.key(0),
                                       mask_id=4)
  tx = optax.adam(0.1)
  state = tx.init(params)
  first = float(loss_fn(params))
  for _ in range(20):
    value, grads = jax.value_and_grad(loss_fn)(params)
    updates, state = tx.update(grads, state)
    params = optax.apply_updates(params, updates)
  assert float(loss_fn(params)) < first - 0.1
  logits_fn = lambda tokens: jax.nn.one_hot((tokens + 1) % 4, 5) * 10.0   # predicts x[i + 1]
  assert float(losses.ar_loss(logits_fn, x)) < 1e-3


def test_small_conveniences():
  import remdm_jax as fresh
  assert callable(fresh.eval.gen_ppl) and callable(fresh.eval.mean_entropy)
  with pytest.raises(ValueError, match="rows must be a non-empty sequence of id sequences"):
    fresh.eval.mean_entropy("hello")
  with pytest.raises(ValueError, match=r"rows\[0\] must be a 1-D sequence of integer ids"):
    fresh.eval.mean_entropy(["hello", "world"])


@pytest.mark.parametrize("time_conditioning,kwargs", [
    pytest.param(True, dict(strategy="loop", eta=0.05, num_steps=16, top_p=0.9),
                 marks=pytest.mark.slow),
    pytest.param(True, dict(strategy="conf", num_steps=16, temperature=0.8),
                 marks=pytest.mark.slow),
    (False, dict(strategy="mdlm", num_steps=16, cache=True)),
    # most positions are still masked at t_min = 0.6: the final removal reads the head's rows
    # of those positions, two per round
    (True, dict(strategy="cap", eta=0.02, num_steps=4, t_min=0.6, draw_capacity=2)),
])
def test_split_head_gives_the_plain_denoisers_tokens(time_conditioning, kwargs):
  """as_denoiser's features/head contract (the head applied only to drawn rows) against the
  same model called as a plain `(z, t) -> logits` function."""
  from flax import nnx
  model = DiT(DiTConfig(vocab_size=259, hidden=32, heads=2, blocks=2, cond_dim=16,
                        max_length=16, time_conditioning=time_conditioning),
              rngs=nnx.Rngs(0))
  model.output_linear.kernel[...] = 0.3 * jax.random.normal(
      jax.random.key(1), model.output_linear.kernel[...].shape)
  split = as_denoiser(model)
  assert split.is_split
  plain = remdm_jax.Denoiser.wrap(lambda z, t: split(z, t), reads_t=split.reads_t)
  prompt = np.full(16, 258, np.int32)
  prompt[:3] = [256, 72, 105]
  cfg = sampler_config(**kwargs)
  run = lambda denoiser: remdm_jax.sample(jax.random.key(0), denoiser, cfg, batch_size=3,
                                          seq_len=16, mask_id=258, prompt=prompt)
  expected = run(plain)
  np.testing.assert_array_equal(run(split), expected)
  apply, params = denoiser_and_params(model)          # the fast path passes the split on
  fast = remdm_jax.make_sampler(apply, cfg, batch_size=3, seq_len=16, mask_id=258)
  np.testing.assert_array_equal(fast(jax.random.key(0), params, prompt), expected)


@pytest.mark.slow
def test_bfloat16_model_logits_stay_bfloat16_and_give_the_float32_tokens():
  """A bfloat16 DiT emits bfloat16 logits (close to its float32 output) and the sampler keeps
  them so ("auto"): the tokens equal those of the same logits upcast to float32 first, on the
  plain and the split path, because SUBS, top-p and the draw are float32 either way."""
  from flax import nnx
  model = DiT(DiTConfig(vocab_size=259, hidden=32, heads=2, blocks=2, cond_dim=16,
                        max_length=16, dtype="bfloat16"), rngs=nnx.Rngs(0))
  model.output_linear.kernel[...] = 0.3 * jax.random.normal(
      jax.random.key(1), model.output_linear.kernel[...].shape)
  split = as_denoiser(model)
  z = jnp.full((2, 16), 258, jnp.int32).at[:, :4].set(72)
  t = jnp.full((2,), 0.5)
  logits = split(z, t)
  assert logits.dtype == jnp.bfloat16
  full = model(z, -jnp.log1p(-(1 - 1e-3) * t))                       # float32 output layer
  assert full.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(logits, np.float32), np.asarray(full), atol=0.05)
  upcast = lambda z, t: split(z, t).astype(jnp.float32)
  cfg = sampler_config(strategy="cap", eta=0.02, num_steps=6, top_p=0.9)
  run = lambda denoiser: np.asarray(remdm_jax.sample(
      jax.random.key(3), denoiser, cfg, batch_size=3, seq_len=16, mask_id=258))
  expected = run(upcast)
  np.testing.assert_array_equal(run(split), expected)
  np.testing.assert_array_equal(run(lambda z, t: split(z, t)), expected)   # plain, bf16
