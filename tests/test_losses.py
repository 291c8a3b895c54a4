"""Losses against direct NumPy computations on hand-built logits."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from remdm_jax.training import losses
from remdm_jax.schedules import LogLinear

from references.nelbo import reference_nelbo

V, MASK = 6, 5


def _case(seed=0, b=4, l=7):
  rng = np.random.default_rng(seed)
  logits = rng.standard_normal((b, l, V)).astype(np.float32) * 2
  x = rng.integers(0, MASK, (b, l)).astype(np.int32)
  z = np.where(rng.random((b, l)) < 0.5, MASK, x).astype(np.int32)
  valid = rng.random((b, l)) < 0.8
  return logits, x, z, valid


def _direct_masked_nll(logits, x, z):
  out = np.zeros(x.shape)
  for b in range(x.shape[0]):
    for i in range(x.shape[1]):
      if z[b, i] == MASK:
        row = logits[b, i, :MASK].astype(np.float64)
        out[b, i] = -(row[x[b, i]] - np.log(np.sum(np.exp(row))))
  return out


def test_continuous_nelbo_weight_one_over_t():
  logits, x, z, valid = _case()
  t = np.array([0.1, 0.4, 0.7, 0.95], np.float32)
  weight = losses.mdlm_continuous_weight(LogLinear(eps=1e-3), jnp.asarray(t))
  np.testing.assert_allclose(np.asarray(weight), 1.0 / t, rtol=1e-5)
  got = jax.jit(losses.nelbo, static_argnums=4)(logits, x, z, weight, MASK, valid)
  direct = (_direct_masked_nll(logits, x, z) / t[:, None] * valid).sum() / valid.sum()
  assert got.dtype == jnp.float32
  np.testing.assert_allclose(float(got), direct, rtol=1e-5)


@pytest.mark.parametrize("num_steps", [4, 1000])
def test_discrete_and_remdm_weights_match_formulas(num_steps):
  """float32 weights against float64 formulas. `alpha_s - alpha_t` cancels in float32, so
  the relative error can reach about T * 2^-24 * 4 (2.4e-4 at T = 1000)."""
  rtol = max(1e-5, num_steps * 2.0 ** -24 * 4)
  steps = np.array([1, 2, num_steps // 2, num_steps])
  sched = LogLinear()
  t, s = steps / num_steps, (steps - 1) / num_steps
  mdlm = num_steps * ((1 - s) - (1 - t)) / t
  w0, t_out = losses.remdm_discrete_weight(sched, jnp.asarray(steps), num_steps)
  np.testing.assert_allclose(np.asarray(w0), mdlm, rtol=rtol)
  np.testing.assert_allclose(np.asarray(t_out), t, rtol=1e-6)
  for eta in (0.1, 0.5, 1.0):
    smax = np.minimum(1.0, s / (1 - t + 1e-300) * (t < 1) + (t >= 1))
    sigma = np.minimum(eta, smax)
    want = (1 + num_steps * sigma * (1 - t)) / t        # brief: alpha = 1 - t form
    got, _ = losses.remdm_discrete_weight(sched, jnp.asarray(steps), num_steps, "cap", eta)
    np.testing.assert_allclose(np.asarray(got), want, rtol=rtol)


def test_remdm_bound_is_looser_and_grows_with_eta():
  logits, x, z, valid = _case(1)
  steps = jnp.array([3, 10, 50, 90])
  values = []
  for eta in (0.0, 0.01, 0.1, 0.5, 1.0):
    rule = None if eta == 0 else "cap"
    w, _ = losses.remdm_discrete_weight(LogLinear(), steps, 100, rule, eta)
    values.append(float(losses.nelbo(logits, x, z, w, MASK, valid)))
  w_mdlm, _ = losses.remdm_discrete_weight(LogLinear(), steps, 100)
  assert values[0] == pytest.approx(float(losses.nelbo(logits, x, z, w_mdlm, MASK, valid)))
  assert all(a < b for a, b in zip(values, values[1:])), values


def test_antithetic_times_and_steps():
  t = np.asarray(losses.continuous_times(jax.random.key(0), 8, eps=1e-3))
  u = (t - 1e-3) / (1 - 1e-3)
  np.testing.assert_allclose(np.sort(np.mod(u - u[0], 1.0)), np.arange(8) / 8, atol=1e-6)
  steps = np.asarray(losses.discrete_steps(jax.random.key(1), 1000, 10))
  assert steps.min() >= 1 and steps.max() <= 10
  np.testing.assert_array_equal(np.bincount(steps, minlength=11)[1:], 100)


def test_corrupt_masks_with_probability_one_minus_alpha():
  x = jnp.zeros((4, 20_000), jnp.int32)
  alpha = jnp.array([0.0, 0.25, 0.5, 1.0])
  z = losses.corrupt(jax.random.key(2), x, alpha, MASK)
  frac = np.asarray(jnp.mean(z == MASK, axis=1))
  np.testing.assert_allclose(frac, 1 - np.asarray(alpha), atol=5 * np.sqrt(0.25 / 20_000))


def test_autoregressive_nll_matches_direct():
  logits, x, _, valid = _case(2)
  got = float(jax.jit(losses.autoregressive_nll)(logits, x, valid))
  lp = logits[:, :-1].astype(np.float64)
  lp = lp - np.log(np.exp(lp).sum(-1, keepdims=True))
  nll = -np.take_along_axis(lp, x[:, 1:, None], -1)[..., 0]
  np.testing.assert_allclose(got, (nll * valid[:, 1:]).sum() / valid[:, 1:].sum(), rtol=1e-5)


# One-call losses against their formulas, written out in NumPy float64. Only the noise is
# taken from JAX: the uniform draws behind the times and the masks, from the documented key
# split (times, masks, dropout); every weight, schedule value, SUBS and NLL is NumPy's.
B, L, EPS, T = 8, 12, 1e-3, 10
W = np.random.default_rng(7).standard_normal((V, V))          # toy denoiser table, [V, V]
VALID = np.arange(L)[None, :] < np.array([12, 12, 9, 12, 5, 12, 12, 12])[:, None]


def _toy_denoiser(z, t):
  """Logits `W[z] (1 + t)`: depend on every token and on the time."""
  return jnp.asarray(W, jnp.float32)[z] * (1.0 + t[:, None, None])


def _reference_nelbo(x, key, rule, eta=0.0, mistake=False):
  """`references.nelbo.reference_nelbo` of the toy denoiser, in float64, over `VALID`."""
  return reference_nelbo(x, key, lambda z, t: W[z] * (1.0 + t[:, None, None]), MASK, rule=rule,
                         eta=eta, eps=EPS, num_steps=T, valid=VALID, mistake=mistake)


@pytest.mark.parametrize("seed", [3, 11])
@pytest.mark.parametrize("name,rule,eta", [("mdlm", None, 0.0), ("mdlm_discrete", "mdlm", 0.0),
                                           ("remdm_cap", "cap", 0.05),
                                           ("remdm_rescale", "rescale", 0.5)])
def test_one_call_losses_equal_their_formulas_in_float64(name, rule, eta, seed):
  """Each diffusion loss equals its NELBO evaluated in float64 for the same draws (rtol 1e-5,
  float32 rounding); the same reference with a plausible wrong weight is more than 1% off,
  so such a weight fails."""
  x = np.asarray(jax.random.randint(jax.random.key(1), (B, L), 0, MASK))
  key = jax.random.key(seed)
  common = dict(mask_id=MASK, valid=jnp.asarray(VALID), eps=EPS)
  loss = {"mdlm": lambda: losses.mdlm_loss(_toy_denoiser, x, key, **common),
          "mdlm_discrete": lambda: losses.mdlm_discrete_loss(_toy_denoiser, x, key,
                                                             num_steps=T, **common),
          "remdm_cap": lambda: losses.remdm_loss(_toy_denoiser, x, key, num_steps=T,
                                                 sigma_rule="cap", eta=eta, **common),
          "remdm_rescale": lambda: losses.remdm_loss(_toy_denoiser, x, key, num_steps=T,
                                                     sigma_rule="rescale", eta=eta, **common)}
  got = loss[name]()
  assert got.dtype == jnp.float32 and got.shape == ()
  want = _reference_nelbo(x, key, rule, eta)
  np.testing.assert_allclose(float(got), want, rtol=1e-5)
  assert abs(_reference_nelbo(x, key, rule, eta, mistake=True) / want - 1) > 1e-2


def test_ar_loss_equals_the_cross_entropy_in_float64():
  """`ar_loss` of a causal toy model (logits at i from token i alone) equals the next-token
  cross-entropy over valid targets, in float64 (rtol 1e-5); dropping the shift fails."""
  x = np.asarray(jax.random.randint(jax.random.key(2), (B, L), 0, V))
  got = losses.ar_loss(lambda tokens: jnp.asarray(W, jnp.float32)[tokens], x,
                       jnp.asarray(VALID))
  log_probs = W[x] - np.log(np.sum(np.exp(W[x]), axis=-1, keepdims=True))   # [B, L, V] f64
  nll = -np.take_along_axis(log_probs[:, :-1], x[:, 1:, None], -1)[..., 0]  # [B, L - 1]
  want = np.sum(nll * VALID[:, 1:]) / np.sum(VALID[:, 1:])
  assert got.dtype == jnp.float32 and got.shape == ()
  np.testing.assert_allclose(float(got), want, rtol=1e-5)
  unshifted = -np.take_along_axis(log_probs, x[..., None], -1)[..., 0]
  assert abs(np.sum(unshifted * VALID) / np.sum(VALID) / want - 1) > 1e-2
