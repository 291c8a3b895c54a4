"""Schedules against closed forms and finite differences, in float64 and under jit."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import remdm_jax
from remdm_jax import schedules

T_VALUES = np.linspace(0.01, 0.99, 25)
CLOSED_FORMS = {
    "loglinear": (dict(eps=1e-3), lambda t: 1 - (1 - 1e-3) * t),
    "cosine": (dict(), lambda t: np.cos(np.pi * t / 2)),
    "linear": (dict(), lambda t: np.exp(-10.0 * t)),
    "polynomial": (dict(power=3.0), lambda t: 1 - t ** 3),
}


@pytest.mark.parametrize("name", sorted(CLOSED_FORMS))
def test_alpha_closed_form_and_derivative(name):
  kwargs, closed = CLOSED_FORMS[name]
  sched = schedules.get_schedule(name, **kwargs)
  np.testing.assert_allclose(sched.alpha(T_VALUES), closed(T_VALUES), rtol=1e-12)
  h = 1e-6
  numeric = (closed(T_VALUES + h) - closed(T_VALUES - h)) / (2 * h)
  np.testing.assert_allclose(sched.alpha_prime(T_VALUES), numeric, rtol=1e-5)
  assert np.all(np.diff(sched.alpha(T_VALUES)) < 0)


@pytest.mark.parametrize("name", sorted(CLOSED_FORMS))
def test_jax_input_stays_jax_float32(name):
  kwargs, closed = CLOSED_FORMS[name]
  sched = schedules.get_schedule(name, **kwargs)
  t = jnp.asarray(T_VALUES, jnp.float32)
  alpha = jax.jit(sched.alpha)(t)
  assert alpha.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(alpha), closed(T_VALUES), rtol=1e-5, atol=1e-6)
  assert jax.jit(sched.alpha_prime)(t).dtype == jnp.float32


def test_total_noise_is_minus_log_alpha_of_the_training_schedule():
  """sigma(t) = -log(1 - (1 - 1e-3) t) by default; another schedule is honoured; JAX input
  stays JAX float32 under jit."""
  expected = -np.log(1 - (1 - 1e-3) * T_VALUES)
  np.testing.assert_allclose(schedules.total_noise(T_VALUES), expected, rtol=1e-12)
  np.testing.assert_allclose(schedules.total_noise(T_VALUES, schedules.Cosine()),
                             -np.log(np.cos(np.pi * T_VALUES / 2)), rtol=1e-12)
  sigma = jax.jit(schedules.total_noise)(jnp.asarray(T_VALUES, jnp.float32))
  assert sigma.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(sigma), expected, rtol=1e-5)


# The reference sampler's grid for T = 4, t_min = 1e-5, written out by hand: t_i = 1 - i dt
# with dt = (1 - 1e-5) / 4 = 0.2499975; step i goes from t_i to t_{i + 1}.
REFERENCE_GRID_4 = np.array([1.0, 0.7500025, 0.500005, 0.2500075, 1e-5])


def test_uniform_grid_is_the_reference_grid():
  """The grid and the MDLM table built on it against hand-written times (alpha = 1 - t for
  loglinear at sampling): a grid reversed or shifted by one step fails at every entry."""
  np.testing.assert_allclose(schedules.uniform_grid(4, 1e-5), REFERENCE_GRID_4,
                             rtol=1e-12, atol=0)
  assert schedules.uniform_grid(4, 1e-5).dtype == np.float64
  t, s = REFERENCE_GRID_4[:-1], REFERENCE_GRID_4[1:]
  a_t, a_s = 1.0 - t, 1.0 - s
  table = remdm_jax.build_table(remdm_jax.SamplerConfig(strategy=remdm_jax.Mdlm(),
                                                        num_steps=4))
  np.testing.assert_allclose(np.asarray(table.t), t, rtol=1e-6)
  np.testing.assert_allclose(np.asarray(table.unmask_base), (a_s - a_t) / (1.0 - a_t),
                             rtol=1e-6)
  np.testing.assert_allclose(np.asarray(table.unmask_per_sigma), a_t / (1.0 - a_t), rtol=1e-6)
  np.testing.assert_allclose(np.asarray(table.sigma_max),
                             [1.0, *np.minimum(1.0, (1.0 - a_s[1:]) / a_t[1:])], rtol=1e-6)
  plan, _ = remdm_jax.build_plan(remdm_jax.SamplerConfig(num_steps=4))
  assert float(plan.t_final) == np.float32(1e-5)       # the final noise removal runs at t_min
  with pytest.raises(ValueError, match=r"num_steps must be in \[1, inf\), got 0"):
    schedules.uniform_grid(0)


def test_bad_schedule_arguments():
  with pytest.raises(ValueError, match="unknown schedule 'exp'; choose from"):
    schedules.get_schedule("exp")
  with pytest.raises(ValueError, match="eps must be in"):
    schedules.LogLinear(eps=1.0)
  with pytest.raises(ValueError, match=r"power must be in \(0, inf\)"):
    schedules.Polynomial(power=0.0)
