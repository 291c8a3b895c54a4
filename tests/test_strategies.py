"""Per-step tables against direct float64 evaluations of the paper's formulas."""

import numpy as np
import pytest

import remdm_jax
from remdm_jax import strategies
from remdm_jax.config import SamplerConfig

from conftest import direct_step_probs

T = 64


def _grid(num_steps):
  t = np.linspace(1.0, 1e-5, num_steps + 1)
  return t[:-1], t[1:]


@pytest.mark.parametrize("cfg", [
    SamplerConfig(strategy="mdlm", num_steps=T),
    SamplerConfig(strategy="cap", num_steps=T, eta=0.04),
    SamplerConfig(strategy="rescale", num_steps=T, eta=0.5),
    SamplerConfig(strategy="conf", num_steps=T),
    SamplerConfig(strategy="fb", num_steps=T),
    SamplerConfig(strategy="loop", num_steps=T, eta=0.02),
    SamplerConfig(strategy="topk", num_steps=T),
], ids=lambda c: c.strategy)
def test_step_probabilities_match_formulas(cfg):
  table = remdm_jax.build_table(cfg)
  p_remask, p_unmask = direct_step_probs(cfg)
  got_unmask = np.asarray(table.unmask_base) + np.asarray(table.sigma) * np.asarray(
      table.unmask_per_sigma)
  np.testing.assert_allclose(np.asarray(table.sigma), p_remask, rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(got_unmask, p_unmask, rtol=1e-5, atol=1e-6)
  assert np.all((p_unmask >= 0) & (p_unmask <= 1 + 1e-12))


def _dfm_grid_reference(num_steps, t_min=1e-5):
  """The adaptive DFM grid written out directly (float64)."""
  ts = [1.0]
  while ts[-1] > t_min:
    t = ts[-1]
    beta = 10.0 * t ** 0.25 * (1.0 - t) ** 0.25
    rate = (1.0 + beta) / t + (beta / (1.0 - t) if t < 1.0 else 0.0)
    ts.append(max(t - min(1.0 / num_steps, 1.0 / rate), t_min))
  return np.array(ts)


def test_dfm_probabilities_and_grid():
  cfg = SamplerConfig(strategy="dfm", num_steps=128)
  table = remdm_jax.build_table(cfg)
  grid = _dfm_grid_reference(128)
  t, s = grid[:-1], grid[1:]
  np.testing.assert_allclose(np.asarray(table.t), t, rtol=1e-6)
  a_t, a_s = 1.0 - t, 1.0 - s
  beta = 10.0 * t ** 0.25 * (1.0 - t) ** 0.25
  remask = np.where(a_t > 0, beta * (a_s - a_t) / np.maximum(a_t, 1e-300), 0.0)
  unmask = (1.0 + beta) * (a_s - a_t) / (1.0 - a_t)
  got_unmask = np.asarray(table.unmask_base) + np.asarray(table.sigma) * np.asarray(
      table.unmask_per_sigma)
  np.testing.assert_allclose(np.asarray(table.sigma)[1:], remask[1:], rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(got_unmask, unmask, rtol=1e-5, atol=1e-6)
  assert np.all(t - s <= 1.0 / 128 + 1e-12)
  assert np.all(unmask <= 1 + 1e-9) and np.all(remask <= 1 + 1e-9)
  assert 128 <= t.shape[0] <= 160   # "about T steps"


@pytest.mark.parametrize("strategy,eta", [("mdlm", 0.0), ("cap", 0.3), ("rescale", 1.0),
                                          ("conf", 0.0), ("loop", 0.1), ("fb", 0.0),
                                          ("dfm", 0.0), ("topk", 0.0)])
@pytest.mark.parametrize("num_steps", [1, 7, 256])
def test_sigma_within_bounds_on_whole_grid(strategy, eta, num_steps):
  table = remdm_jax.build_table(SamplerConfig(strategy=strategy, num_steps=num_steps,
                                              eta=eta))
  sigma, smax = np.asarray(table.sigma), np.asarray(table.sigma_max)
  assert np.all(sigma >= 0) and np.all(sigma <= smax * (1 + 1e-6))
  p_unmask = np.asarray(table.unmask_base) + sigma * np.asarray(table.unmask_per_sigma)
  # A masked position stays masked with probability 1 - p_unmask, so both outcomes of either
  # branch are probabilities exactly when these bounds hold.
  assert np.all(p_unmask >= 0) and np.all(p_unmask <= 1 + 1e-5)


def test_loop_phases_hit_paper_fractions():
  cfg = SamplerConfig(strategy="loop", num_steps=1024, eta=0.02)
  t, s = _grid(1024)
  counts = np.bincount(strategies.loop_phase(cfg, t, s), minlength=4)[1:]
  np.testing.assert_allclose(counts / 1024, [0.45, 0.50, 0.05], atol=1.5 / 1024)
  table = remdm_jax.build_table(cfg)
  assert int(np.sum(np.asarray(table.sigma) > 0)) == counts[1]


def test_topk_counts():
  # The grid ends at t_min = 1e-5, so the phase boundaries sit just off multiples of 1/64.
  cfg = SamplerConfig(strategy="topk", num_steps=64, topk_remask=1, t_on=0.563, t_off=0.062)
  table = remdm_jax.build_table(cfg)
  remask = np.asarray(table.remask_count)
  assert int(np.sum(remask > 0)) == 32   # LLaDA's 28 / 32 / 4 split
  frac = np.asarray(table.decoded_frac)
  assert frac[-1] == 1.0 and np.all(np.diff(frac) >= 0)
  np.testing.assert_array_equal(np.diff(frac)[remask[1:] > 0], 0.0)


@pytest.mark.parametrize("kwargs,match", [
    (dict(strategy="loop", eta=0.2, alpha_on=0.9), r"eta must be in \[0, \(1 - alpha_on\)"),
    (dict(strategy="rescale", eta=1.5), r"eta must be in \[0, 1\] for rescale"),
    (dict(strategy="loop", loop_base="rescale", eta=1.5), r"eta must be in \[0, 1\]"),
    (dict(num_steps=0), r"num_steps must be in \[1, inf\), got 0"),
    (dict(strategy="loop", t_on=0.1, t_off=0.2), r"t_off < t_on"),
    (dict(top_p=0.0), r"top_p must be in \(0, 1\], got 0.0"),
    (dict(top_p=1.5), r"top_p must be in \(0, 1\]"),
    (dict(temperature=0.0), r"temperature must be in \(0, inf\), got 0.0"),
    (dict(strategy="bogus"), r"unknown strategy 'bogus'; choose from \['cap'"),
    (dict(eta=-0.1), r"eta must be in \[0, inf\), got -0.1"),
    (dict(top_p_mode="hf"), r"unknown top_p_mode"),
])
def test_bad_config_is_rejected_with_named_argument(kwargs, match):
  with pytest.raises(ValueError, match=match):
    SamplerConfig(**kwargs)


def test_plan_is_data_and_rule_is_static():
  plan_a, rule_a = remdm_jax.build_plan(SamplerConfig(strategy="cap", eta=0.01))
  plan_b, rule_b = remdm_jax.build_plan(SamplerConfig(strategy="cap", eta=0.02))
  assert rule_a == rule_b and hash(rule_a) == hash(rule_b)
  assert plan_a.table.sigma.dtype == np.float32
  assert plan_a.table.remask_count.dtype == np.int32
