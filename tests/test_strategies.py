"""Per-step tables against direct float64 evaluations of the paper's formulas, and topk's
position chunks against the exact distribution of confidence decoding."""

import collections
import functools
import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import remdm_jax
from remdm_jax.sampling import strategies
from remdm_jax.sampling.config import sampler_config

from references.mixture import dfm_grid_reference, direct_step_probs

T = 64


def _grid(num_steps):
  t = np.linspace(1.0, 1e-5, num_steps + 1)
  return t[:-1], t[1:]


@pytest.mark.parametrize("cfg", [
    sampler_config(strategy="mdlm", num_steps=T),
    sampler_config(strategy="cap", num_steps=T, eta=0.04),
    sampler_config(strategy="rescale", num_steps=T, eta=0.5),
    sampler_config(strategy="conf", num_steps=T),
    sampler_config(strategy="fb", num_steps=T),
    sampler_config(strategy="loop", num_steps=T, eta=0.02),
    sampler_config(strategy="topk", num_steps=T),
], ids=lambda c: c.strategy.name)
def test_step_probabilities_match_formulas(cfg):
  table = remdm_jax.build_table(cfg)
  p_remask, p_unmask = direct_step_probs(cfg)
  got_unmask = np.asarray(table.unmask_base) + np.asarray(table.sigma) * np.asarray(
      table.unmask_per_sigma)
  np.testing.assert_allclose(np.asarray(table.sigma), p_remask, rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(got_unmask, p_unmask, rtol=1e-5, atol=1e-6)


def test_dfm_probabilities_and_grid():
  cfg = sampler_config(strategy="dfm", num_steps=128)
  table = remdm_jax.build_table(cfg)
  grid = dfm_grid_reference(128)
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


@pytest.mark.parametrize("strategy", [remdm_jax.Mdlm(), remdm_jax.Cap(0.3),
                                      remdm_jax.Rescale(1.0), remdm_jax.Conf(),
                                      remdm_jax.Loop(eta=0.1), remdm_jax.Fb(), remdm_jax.Dfm(),
                                      remdm_jax.Topk()], ids=lambda s: s.name)
@pytest.mark.parametrize("num_steps", [1, 7, 256])
def test_sigma_within_bounds_on_whole_grid(strategy, num_steps):
  table = remdm_jax.build_table(remdm_jax.SamplerConfig(strategy=strategy, num_steps=num_steps))
  sigma, smax = np.asarray(table.sigma), np.asarray(table.sigma_max)
  assert np.all(sigma >= 0) and np.all(sigma <= smax * (1 + 1e-6))
  p_unmask = np.asarray(table.unmask_base) + sigma * np.asarray(table.unmask_per_sigma)
  # A masked position stays masked with probability 1 - p_unmask, so both outcomes of either
  # branch are probabilities exactly when these bounds hold.
  assert np.all(p_unmask >= 0) and np.all(p_unmask <= 1 + 1e-5)


def test_loop_phases_hit_paper_fractions():
  cfg = sampler_config(strategy="loop", num_steps=1024, eta=0.02)
  t, s = _grid(1024)
  counts = np.bincount(strategies.loop_phase(0.55, 0.05, t, s), minlength=4)[1:]
  np.testing.assert_allclose(counts / 1024, [0.45, 0.50, 0.05], atol=1.5 / 1024)
  table = remdm_jax.build_table(cfg)
  assert int(np.sum(np.asarray(table.sigma) > 0)) == counts[1]


def test_topk_counts():
  # The grid ends at t_min = 1e-5, so the phase boundaries sit just off multiples of 1/64.
  cfg = sampler_config(strategy="topk", num_steps=64, remask=1, t_on=0.563, t_off=0.062)
  table = remdm_jax.build_table(cfg)
  remask = np.asarray(table.remask_count)
  assert int(np.sum(remask > 0)) == 32   # LLaDA's 28 / 32 / 4 split
  frac = np.asarray(table.decoded_frac)
  assert frac[-1] == 1.0 and np.all(np.diff(frac) >= 0)
  np.testing.assert_array_equal(np.diff(frac)[remask[1:] > 0], 0.0)


@pytest.mark.parametrize("kwargs,match", [
    (dict(strategy="loop", eta=0.2, alpha_on=0.9), r"eta must be in \[0, \(1 - alpha_on\)"),
    (dict(strategy="rescale", eta=1.5), r"eta must be in \[0, 1\] for strategy 'rescale'"),
    (dict(strategy="loop", base="rescale", eta=1.5), r"eta must be in \[0, 1\]"),
    (dict(num_steps=0), r"num_steps must be in \[1, inf\), got 0"),
    (dict(strategy="loop", t_on=0.1, t_off=0.2), r"t_off < t_on"),
    (dict(top_p=0.0), r"top_p must be in \(0, 1\], got 0.0"),
    (dict(top_p=1.5), r"top_p must be in \(0, 1\]"),
    (dict(temperature=0.0), r"temperature must be in \(0, inf\), got 0.0"),
    (dict(strategy="bogus"), r"unknown strategy 'bogus'; choose from \['cap'"),
    (dict(strategy="cap", eta=-0.1), r"eta must be in \[0, inf\) for strategy 'cap', got -0.1"),
    # an option the strategy does not have is named, with the strategies that have it
    (dict(strategy="mdlm", eta=0.5), r"eta does not apply to strategy 'mdlm' \(its own options: "
                                     r"none; eta belongs to \['cap', 'conf', 'llada', 'loop', 'rescale'\]"),
    (dict(strategy="cap", t_on=0.5), r"t_on does not apply to strategy 'cap'"),
    (dict(strategy="loop", schedule="cosine"), r"schedule does not apply to strategy 'loop'"),
    (dict(strategy="dfm", schedule="cosine"), r"schedule does not apply to strategy 'dfm'"),
    (dict(strategy="conf", eta=0.1), r"eta does not apply to strategy 'conf' with base 'max'"),
    (dict(strategy="topk", t_on=0.5), r"t_on and t_off apply to strategy 'topk' only with "),
    (dict(strategy="loop", t_min=0.1), r"need t_min <= t_off for strategy 'loop'"),
    (dict(strategy="loop", base="max"), r"unknown base 'max'"),
    (dict(bogus=1), r"unknown option 'bogus'; strategy 'mdlm' takes none, every strategy "
                   r"takes \['cache',"),
    (dict(top_p_mode="hf"), r"unknown top_p_mode"),
])
def test_bad_config_is_rejected_with_named_argument(kwargs, match):
  with pytest.raises(ValueError, match=match):
    sampler_config(**kwargs)


def test_plan_is_data_and_rule_is_static():
  plan_a, rule_a = remdm_jax.build_plan(sampler_config(strategy="cap", eta=0.01))
  plan_b, rule_b = remdm_jax.build_plan(sampler_config(strategy="cap", eta=0.02))
  assert rule_a == rule_b and hash(rule_a) == hash(rule_b)
  assert plan_a.table.sigma.dtype == np.float32
  assert plan_a.table.remask_count.dtype == np.int32


def test_a_new_strategy_name_starts_from_its_own_defaults():
  loop = sampler_config("loop", eta=0.05, num_steps=32)
  cap = loop.with_options(strategy="cap")
  assert cap.strategy == remdm_jax.Cap() and cap.num_steps == 32   # loop's eta is not inherited
  assert loop.with_options(t_on=0.6).strategy == remdm_jax.Loop(eta=0.05, t_on=0.6)
  assert sampler_config(**loop.options()) == loop


def test_strategy_must_be_an_object():
  with pytest.raises(TypeError, match=r"strategy must be a strategy object .* got 'cap'"):
    remdm_jax.SamplerConfig(strategy="cap")


@pytest.mark.parametrize("schedule,alpha", [
    ("cosine", lambda t: np.cos(np.pi * t / 2)),
    ("linear", lambda t: np.exp(-10.0 * t)),
    ("polynomial", lambda t: 1.0 - t ** 2),
])
@pytest.mark.parametrize("strategy", [remdm_jax.Mdlm(), remdm_jax.Cap(0.05),
                                      remdm_jax.Rescale(0.5), remdm_jax.Fb()],
                         ids=lambda s: s.name)
def test_other_schedules_give_the_formulas_of_their_alpha(schedule, alpha, strategy):
  """Tables under cosine, linear and polynomial alpha against eq. 6 written out in float64."""
  cfg = remdm_jax.SamplerConfig(strategy=strategy, num_steps=16, schedule=schedule)
  table = remdm_jax.build_table(cfg)
  t, s = _grid(16)
  a_t, a_s = alpha(t), alpha(s)
  with np.errstate(divide="ignore"):   # polynomial: alpha(1) = 0, where sigma_max = 1
    smax = np.where(a_t > 0, np.minimum(1.0, (1.0 - a_s) / a_t), 1.0)
    sigma = {"mdlm": 0.0 * smax, "cap": np.minimum(0.05, smax), "rescale": 0.5 * smax,
             "fb": np.minimum((a_s - a_t) / a_t, smax)}[strategy.name]
  unmask = (a_s - (1.0 - sigma) * a_t) / (1.0 - a_t)
  got = np.asarray(table.unmask_base) + np.asarray(table.sigma) * np.asarray(
      table.unmask_per_sigma)
  np.testing.assert_allclose(np.asarray(table.sigma), sigma, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(got, unmask, rtol=1e-5, atol=1e-6)
  assert not np.allclose(a_t, 1.0 - t)   # the schedule is really used


# --- topk's position_chunk: x_theta, top-p and draws for C positions at a time. ------------
# A factorised distribution over L = 4 positions and ids 0..3 (id 4 is the mask), every
# (position, id) probability distinct so that confidence ranks never tie.
TOPK_P = np.array([[0.52, 0.27, 0.14, 0.07],
                   [0.06, 0.17, 0.32, 0.45],
                   [0.36, 0.29, 0.22, 0.13],
                   [0.11, 0.41, 0.25, 0.23]])
TOPK_LOGITS = np.concatenate([np.log(TOPK_P), np.full((4, 1), -np.inf)],   # mask: never
                             axis=1).astype(np.float32)
# Reference top-p at 0.8 keeps the ids whose sorted cumulative mass is <= 0.8 (0.79, 0.77,
# 0.65 and 0.66 per position), here the two most likely of each position, renormalised.
TOPK_TOP_P = 0.8
TOPK_KEPT = np.array([[1, 1, 0, 0], [0, 0, 1, 1], [1, 1, 0, 0], [0, 1, 1, 0]])
TOPK_NUCLEUS = TOPK_P * TOPK_KEPT / np.sum(TOPK_P * TOPK_KEPT, axis=1, keepdims=True)
TOPK_N = 20_000


def _factorised(z, t):
  """Oracle x_theta of `TOPK_P`: the same per-position distribution whatever z and t."""
  del t
  return jnp.broadcast_to(jnp.asarray(TOPK_LOGITS), z.shape + (5,))   # [B, L, V] f32


def _topk_config(chunk):
  return sampler_config(strategy="topk", num_steps=4, position_chunk=chunk, top_p=TOPK_TOP_P)


def _topk_sample(chunk, n=TOPK_N):
  """`[n, 4]` topk samples of the oracle, key 0 (one executable per chunk and n)."""
  return np.asarray(remdm_jax.sample(jax.random.key(0), _factorised, _topk_config(chunk),
                                     batch_size=n, seq_len=4, mask_id=4))


def _output_shapes(cfg, batch_size) -> set:
  """Shapes of every value the traced sampler computes, nested jaxprs included."""
  closed = jax.make_jaxpr(lambda key: remdm_jax.sample(
      key, _factorised, cfg, batch_size=batch_size, seq_len=4, mask_id=4))(jax.random.key(0))
  shapes, todo = set(), [closed.jaxpr]
  while todo:
    jaxpr = todo.pop()
    for eqn in jaxpr.eqns:
      shapes.update(tuple(v.aval.shape) for v in eqn.outvars)
      for value in eqn.params.values():
        for sub in value if isinstance(value, (list, tuple)) else [value]:
          sub = getattr(sub, "jaxpr", sub)
          if hasattr(sub, "eqns"):
            todo.append(sub)
  return shapes


def _topk_exact(p: np.ndarray, num_steps: int) -> dict:
  """The exact distribution of topk's output (float64): at step i every masked position l
  draws x_l ~ p[l] and the `round(i L / T)` - decoded ones with the largest p[l, x_l] are
  unmasked with their draws (ties, absent here, would go to the lower position)."""
  length, ids = p.shape

  @functools.lru_cache(maxsize=None)
  def finals(state, step):
    if step == num_steps:
      return {state: 1.0}
    masked = [l for l in range(length) if state[l] is None]
    count = round((step + 1) * length / num_steps) - (length - len(masked))
    out = collections.defaultdict(float)
    for draw in itertools.product(range(ids), repeat=len(masked)):
      weight = math.prod(p[l, x] for l, x in zip(masked, draw))
      if weight == 0.0:
        continue
      new = list(state)
      for l, x in sorted(zip(masked, draw), key=lambda lx: -p[lx])[:count]:
        new[l] = x
      for final, q in finals(tuple(new), step + 1).items():
        out[final] += weight * q
    return dict(out)

  return finals((None,) * length, 0)


def _chi_square(samples: np.ndarray, probs: dict) -> tuple[float, int]:
  """Pearson's statistic over the sequences with expected count >= 5 plus one pooled cell
  for the rest (samples outside the support count there; with nothing expected there, one
  such sample makes the statistic infinite), and its degrees of freedom."""
  n = len(samples)
  counts = collections.Counter(map(tuple, samples.tolist()))
  big = [s for s, q in probs.items() if n * q >= 5]
  observed = [counts[s] for s in big]
  expected = [n * probs[s] for s in big]
  rest_observed = n - sum(observed)
  rest_expected = max(n - sum(expected), 0.0)
  if rest_observed or rest_expected > 1e-6:
    observed.append(rest_observed)
    expected.append(rest_expected)
  with np.errstate(divide="ignore"):
    stat = sum(np.float64(o - e) ** 2 / e for o, e in zip(observed, expected))
  return float(stat), len(observed) - 1


def _chi_square_bound(dof: int, z: float = 4.0) -> float:
  """Wilson-Hilferty upper quantile of chi-square(dof) at standard-normal z (z = 4: a false
  alarm probability of about 3e-5)."""
  a = 2.0 / (9.0 * dof)
  return dof * (1.0 - a + z * math.sqrt(a)) ** 3


@pytest.mark.slow
def test_topk_position_chunks_run_chunked_and_give_identical_tokens():
  """position_chunk C in {1, 2} gives the tokens of no chunking (per-position keys), top-p
  on, for all N = 20,000 samples; a chunk below seq_len really computes x_theta and the draws
  on [B, C, V] blocks, which the unchunked sampler never forms; a chunk must divide seq_len.
  (C = seq_len takes the unchunked path.)"""
  reference = _topk_sample(0)
  assert len(np.unique(reference, axis=0)) >= 8           # not a degenerate stream
  for chunk in (1, 2):
    np.testing.assert_array_equal(_topk_sample(chunk), reference)
  unchunked = _output_shapes(_topk_config(0), batch_size=6)
  for chunk in (1, 2):
    assert (6, chunk, 5) in _output_shapes(_topk_config(chunk), batch_size=6)
    assert (6, chunk, 5) not in unchunked
  with pytest.raises(ValueError, match="position_chunk must divide seq_len 4, got 3"):
    _topk_sample(3, n=2)


def test_topk_with_position_chunks_samples_its_exact_distribution():
  """topk (T = 4 steps, L = 4, top-p 0.8) with the factorised oracle and position_chunk = 2:
  the N = 20,000 samples (key 0) against the exact distribution of confidence decoding over
  the nucleus, enumerated in float64; Pearson's chi-square (cells with expected count < 5
  pooled) must stay below the z = 4 quantile. Confidence decoding is not the data
  distribution: the same samples exceed ten times the bound against the plain product of
  the nucleus marginals, so a topk that ignored confidence would fail."""
  exact = _topk_exact(TOPK_NUCLEUS, num_steps=4)
  assert abs(sum(exact.values()) - 1.0) < 1e-12
  samples = _topk_sample(2)
  stat, dof = _chi_square(samples, exact)
  assert stat < _chi_square_bound(dof), (stat, dof)
  product = {s: math.prod(TOPK_NUCLEUS[l, x] for l, x in enumerate(s))
             for s in itertools.product(range(4), repeat=4)}
  product = {s: q for s, q in product.items() if q > 0}
  wrong, wrong_dof = _chi_square(samples, product)
  assert wrong > 10 * _chi_square_bound(wrong_dof), (wrong, wrong_dof)
