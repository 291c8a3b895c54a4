"""The sampler: one suite over every strategy, exact and statistical checks, sharding."""

import collections
import itertools
import json
import pathlib

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

import remdm_jax
from remdm_jax import sampler_config
from remdm_jax.sampling import step_rules

from references.mixture import (MASK_ID, MIXTURE_SEQS, direct_step_probs, oracle_denoiser,
                               tv_to_mixture)

SUITE = [
    sampler_config(strategy="mdlm", num_steps=16),
    sampler_config(strategy="cap", num_steps=16, eta=0.05),
    sampler_config(strategy="rescale", num_steps=16, eta=0.5, top_p=0.9),
    sampler_config(strategy="conf", num_steps=16),
    sampler_config(strategy="conf", num_steps=16, score="logprob", base="cap",
                  eta=0.1),
    sampler_config(strategy="loop", num_steps=16, eta=0.05),
    sampler_config(strategy="loop", num_steps=16, eta=0.5, base="rescale"),
    sampler_config(strategy="loop", num_steps=16, eta=0.5, base="rescale",
                  conf="prob", top_p=0.8, top_p_impl="bisect"),
    sampler_config(strategy="fb", num_steps=16),
    sampler_config(strategy="dfm", num_steps=16),
    sampler_config(strategy="topk", num_steps=16),
    sampler_config(strategy="topk", num_steps=16, remask=1, temperature=0.7),
    sampler_config(strategy="mdlm", num_steps=16, cache=True, top_p=0.9,
                  top_p_mode="standard"),
]
B, L = 32, 6


def _ids(cfg):
  return f"{cfg.strategy}-{cfg.top_p}-{cfg.cache}"


def _run(cfg, denoiser, key=0, **kwargs):
  fn = jax.jit(lambda k: remdm_jax.sample(k, denoiser, cfg, batch_size=B, seq_len=L,
                                          mask_id=MASK_ID, **kwargs))
  return fn(jax.random.key(key))


def _prompt():
  """Per-example templates taken from the mixture's sequences (so the oracle is defined)."""
  source = MIXTURE_SEQS[np.arange(B) % 4]
  prompt = np.full((B, L), MASK_ID, np.int32)
  prompt[:, 0] = source[:, 0]          # a fixed first token per example
  prompt[::2, 3] = source[::2, 3]      # and an infilled position in half of them
  return jnp.asarray(prompt)


def _assert_remasking_follows_sigma(cfg, steps, remask_count):
  """Checks a trajectory `steps [S, B, L]` (no prompt) against the per-step sigma written out
  from the papers' formulas (`direct_step_probs`, float64, not the library's table).

  A decoded token either stays or becomes the mask. No token is remasked at a step with
  sigma = 0. The remasks total sum_i sigma_i * n_i within 5 sd, where n_i counts the decoded
  tokens before step i, or for confidence weights (which sum to 1 over a sequence's decoded
  tokens) the sequences with one; sd is the binomial sd, or for confidence weights its bound
  sqrt(sum_i sigma_i * n_i). Where that expectation is at least 10, at least one token is
  remasked (independent flips: P(none) <= exp(-10)). topk remasks exactly
  min(remask_count_i, decoded) tokens of each sequence (its counts are checked against
  LLaDA's split in test_strategies)."""
  before = np.concatenate([np.full_like(steps[:1], MASK_ID), steps[:-1]])   # [S, B, L]
  decoded = before != MASK_ID
  assert np.all((steps[decoded] == before[decoded]) | (steps[decoded] == MASK_ID))
  remasked = decoded & (steps == MASK_ID)                                    # [S, B, L]
  strategy = cfg.strategy
  if strategy.name == "topk":
    np.testing.assert_array_equal(remasked.sum(-1),
                                  np.minimum(remask_count[:, None], decoded.sum(-1)))
    assert (remasked.sum() > 0) == (strategy.remask > 0)
    return
  sigma, _ = direct_step_probs(cfg)                                          # [S] f64
  assert sigma.shape == (steps.shape[0],), (sigma.shape, steps.shape)
  weighted = strategy.name == "conf" or getattr(strategy, "conf", "none") != "none"
  trials = np.any(decoded, -1).sum(-1) if weighted else decoded.sum((1, 2))  # [S]
  count = remasked.sum((1, 2))                                               # [S]
  assert np.all(count[sigma == 0] == 0), count
  expected = np.sum(sigma * trials)
  sd = np.sqrt(expected if weighted else np.sum(sigma * (1 - sigma) * trials))
  assert abs(count.sum() - expected) <= 5 * sd + 1e-9, (count.sum(), expected, sd)
  if expected >= 10:
    assert count.sum() > 0


def test_the_remasking_check_fails_for_a_cap_that_never_remasks(mixture, monkeypatch):
  """The suite's remasking check has the power to fail: a `cap` whose sigma is 0 (so the
  sampler never remasks) is caught, seed 4 as in the suite."""
  from remdm_jax.sampling import strategies
  cfg = SUITE[1]
  assert cfg.strategy.name == "cap"
  monkeypatch.setattr(strategies.Cap, "sigma",
                      lambda self, t, s, alpha_t, alpha_s, smax: np.zeros_like(smax))
  plan, rule = remdm_jax.build_plan(cfg)
  assert float(np.max(np.asarray(plan.table.sigma))) == 0.0
  history = np.asarray(jax.jit(lambda k: remdm_jax.sample_with_plan(
      k, mixture, plan, rule, batch_size=B, seq_len=L, mask_id=MASK_ID,
      return_trajectory=True))(jax.random.key(4)).steps)
  with pytest.raises(AssertionError):
    _assert_remasking_follows_sigma(cfg, history, np.asarray(plan.table.remask_count))


def _assert_prompt_positions_never_change(cfg, mixture):
  prompt = _prompt()
  plan, rule = remdm_jax.build_plan(cfg)
  trajectory = jax.jit(lambda k: remdm_jax.sample_with_plan(
      k, mixture, plan, rule, batch_size=B, seq_len=L, mask_id=MASK_ID, prompt=prompt,
      return_trajectory=True))(jax.random.key(3))
  fixed = np.asarray(prompt) != MASK_ID
  np.testing.assert_array_equal(np.asarray(trajectory.tokens)[fixed], np.asarray(prompt)[fixed])
  for step in np.asarray(trajectory.steps):
    np.testing.assert_array_equal(step[fixed], np.asarray(prompt)[fixed])


@pytest.mark.parametrize("cfg", [SUITE[1], SUITE[7], SUITE[11]], ids=_ids)
def test_prompt_positions_never_change(cfg, mixture):
  """Eq. 6 remasking, conf-weighted loop with top-p, and confidence ranking with remasking
  (every strategy: the slow set)."""
  _assert_prompt_positions_never_change(cfg, mixture)


@pytest.mark.parametrize("cfg", SUITE, ids=_ids)
class TestEveryStrategy:

  def test_shape_dtype_no_mask_left_and_keys(self, cfg, mixture):
    """Output contract, and: same key gives the same tokens, another key other tokens."""
    fn = jax.jit(lambda k: remdm_jax.sample(k, mixture, cfg, batch_size=B, seq_len=L,
                                            mask_id=MASK_ID))
    out, again, other = (fn(jax.random.key(seed)) for seed in (5, 5, 6))
    chex.assert_shape(out, (B, L))
    chex.assert_type(out, jnp.int32)
    assert int(jnp.max(out)) < MASK_ID and int(jnp.min(out)) >= 0
    np.testing.assert_array_equal(np.asarray(out), np.asarray(again))
    assert np.any(np.asarray(out) != np.asarray(other))

  @pytest.mark.slow
  def test_prompt_positions_never_change(self, cfg, mixture):
    _assert_prompt_positions_never_change(cfg, mixture)

  def test_decoded_tokens_change_only_by_remasking(self, cfg, mixture):
    """A decoded token either stays or becomes the mask, as often as the paper's sigma says
    (`_assert_remasking_follows_sigma`)."""
    plan, rule = remdm_jax.build_plan(cfg)
    history = np.asarray(jax.jit(lambda k: remdm_jax.sample_with_plan(
        k, mixture, plan, rule, batch_size=B, seq_len=L, mask_id=MASK_ID,
        return_trajectory=True))(jax.random.key(4)).steps)
    _assert_remasking_follows_sigma(cfg, history, np.asarray(plan.table.remask_count))

  @pytest.mark.slow
  def test_traced_once_across_keys(self, cfg, mixture):
    chex.clear_trace_counter()

    @jax.jit
    @chex.assert_max_traces(n=1)
    def fn(key):
      return remdm_jax.sample(key, mixture, cfg, batch_size=B, seq_len=L, mask_id=MASK_ID)
    for seed in range(3):
      fn(jax.random.key(seed)).block_until_ready()


def _sample_mixture(cfg, denoiser, n=4000, key=1):
  fn = jax.jit(lambda k: remdm_jax.sample(k, denoiser, cfg, batch_size=n, seq_len=L,
                                          mask_id=MASK_ID))
  return np.asarray(fn(jax.random.key(key)))


@pytest.mark.slow
def test_mdlm_converges_to_the_data_as_steps_grow(mixture):
  """TV to a 4-sequence mixture falls with T (parallel decoding errors vanish); N = 4000,
  seed 1. Measured: T=2 0.67, T=8 0.28, T=64 0.03 (sampling noise alone is about 0.01)."""
  tvs = [tv_to_mixture(_sample_mixture(sampler_config(num_steps=t), mixture))
         for t in (2, 8, 64)]
  assert tvs[0] > tvs[1] > tvs[2]
  assert tvs[2] < 0.05


@pytest.mark.parametrize("cfg", [
    sampler_config(strategy="mdlm", num_steps=256),
    sampler_config(strategy="cap", num_steps=256, eta=0.005),
    sampler_config(strategy="rescale", num_steps=256, eta=0.02),
    sampler_config(strategy="conf", num_steps=256, base="cap", eta=0.005),
    sampler_config(strategy="loop", num_steps=256, eta=0.005),
    sampler_config(strategy="fb", num_steps=256),
    sampler_config(strategy="dfm", num_steps=256, beta_scale=1.0),
], ids=lambda c: c.strategy)
def test_every_strategy_reproduces_the_data(cfg, mixture):
  """With an exact denoiser and small remasking, samples match the mixture: TV < 0.05 at
  N = 4000 (seed 1; sampling noise alone gives about 0.01). topk is excluded: picking the
  most confident draws biases towards likely tokens by design."""
  assert tv_to_mixture(_sample_mixture(cfg, mixture)) < 0.05


# --- The AB/BA example of brief section 10, enumerated exactly. ------------------------
A, BB, M = 0, 1, 2   # ids: A, B, mask


def _x_theta(other):
  """Exact x_theta of one position given the other's value: its complement, or uniform."""
  return {A: np.array([0.0, 1.0]), BB: np.array([1.0, 0.0]), M: np.array([0.5, 0.5])}[other]


def _position_moves(value, psi, other, p_remask, p_unmask):
  """`[((value, psi), probability)]` of one position after a step; psi is the probability
  its token had when it was drawn (0 while masked)."""
  if value != M:
    return [((value, psi), 1.0 - p_remask), ((M, 0.0), p_remask)]
  probs = _x_theta(other)
  return [((v, probs[v]), p_unmask * probs[v]) for v in (A, BB)] + [((M, 0.0), 1.0 - p_unmask)]


def _conf_weights(x, px, y, py):
  """softmax(-psi) over the decoded positions of the pair, 0 at masked ones."""
  decoded = np.array([x != M, y != M])
  w = np.where(decoded, np.exp(-np.array([px, py])), 0.0)
  return w / max(w.sum(), 1e-300)


def exact_ab_law(sigma, unmask_base, unmask_per_sigma, conf=False):
  """Exact law of the final pair under the chain (paper eq. 6 per position, the two positions
  independent given the state), including the greedy final step. With `conf`, each decoded
  position's sigma is weighted by `_conf_weights` and a masked one's is 0."""
  dist = {(M, 0.0, M, 0.0): 1.0}
  for s, base, per in zip(sigma, unmask_base, unmask_per_sigma):
    nxt = collections.defaultdict(float)
    for (x, px, y, py), mass in dist.items():
      weights = _conf_weights(x, px, y, py) if conf else np.array([x != M, y != M], float)
      moves = []
      for value, psi, other, w in ((x, px, y, weights[0]), (y, py, x, weights[1])):
        own = s * w if conf else s
        moves.append(_position_moves(value, psi, other, own,
                                     np.clip(base + own * per, 0.0, 1.0)))
      for (nx, npx), qx in moves[0]:
        for (ny, npy), qy in moves[1]:
          if mass * qx * qy:
            nxt[(nx, npx, ny, npy)] += mass * qx * qy
    dist = nxt
  final = np.zeros((2, 2))
  for (x, _, y, _), mass in dist.items():
    fx = x if x != M else int(np.argmax(_x_theta(y)))
    fy = y if y != M else int(np.argmax(_x_theta(x)))
    final[fx, fy] += mass
  return final


def exact_ab_distribution(p_remask, p_unmask):
  """`exact_ab_law` for per-step remask and unmask probabilities (no conf weighting)."""
  return exact_ab_law(p_remask, p_unmask, np.zeros_like(p_unmask))


def _direct_ab_law(cfg):
  """The exact law from the formulas of `direct_step_probs` (alpha = 1 - t, or loop's)."""
  sigma, p_unmask = direct_step_probs(cfg)
  if cfg.strategy.name != "conf":
    return exact_ab_distribution(sigma, p_unmask)
  t = np.linspace(1.0, cfg.t_min, cfg.num_steps + 1)
  a_t, a_s = 1.0 - t[:-1], 1.0 - t[1:]
  return exact_ab_law(sigma, (a_s - a_t) / (1.0 - a_t), a_t / (1.0 - a_t), conf=True)


AB_CONFIGS = [sampler_config(strategy="mdlm", num_steps=4),
              sampler_config(strategy="cap", num_steps=8, eta=0.2),
              sampler_config(strategy="rescale", num_steps=8, eta=0.6),
              sampler_config(strategy="conf", num_steps=8),
              sampler_config(strategy="conf", num_steps=8, base="rescale", eta=0.8),
              sampler_config(strategy="fb", num_steps=6),
              sampler_config(strategy="dfm", num_steps=6, beta_scale=2.0),
              sampler_config(strategy="loop", num_steps=12, eta=0.1, t_on=0.7, t_off=0.2)]


@pytest.mark.parametrize("cfg", AB_CONFIGS, ids=lambda c: repr(c.strategy))
def test_ab_ba_sampled_frequencies_match_exact_enumeration(cfg):
  """N = 40000 samples (seed 0): each of AA, AB, BA, BB within 5 binomial sd of the exact
  enumeration made from the paper's formulas."""
  exact = _direct_ab_law(cfg).reshape(-1)
  denoiser = oracle_denoiser(np.array([[A, BB], [BB, A]]), np.array([0.5, 0.5]), 3)
  n = 40_000
  out = jax.jit(lambda k: remdm_jax.sample(k, denoiser, cfg, batch_size=n, seq_len=2,
                                           mask_id=M))(jax.random.key(0))
  out = np.asarray(out)
  freq = np.bincount(out[:, 0] * 2 + out[:, 1], minlength=4) / n
  sd = np.sqrt(exact * (1 - exact) / n)
  assert np.all(np.abs(freq - exact) <= 5 * sd + 1.0 / n), (freq, exact)


def test_exact_laws_tell_the_strategies_apart():
  """The enumeration is sharp enough for the test above: each strategy's exact law differs
  from MDLM's at the same T by more than the 5-sd tolerance of N = 40000 samples."""
  for cfg in AB_CONFIGS[1:]:
    mdlm = _direct_ab_law(sampler_config(strategy="mdlm", num_steps=cfg.num_steps)).reshape(-1)
    law = _direct_ab_law(cfg).reshape(-1)
    assert np.max(np.abs(law - mdlm) / (np.sqrt(law * (1 - law) / 40_000) + 1e-12)) > 5, cfg


def test_more_loop_steps_strictly_lower_impossible_pairs():
  """Exact P(AA) + P(BB) under the library's loop tables falls strictly with T."""
  errors = []
  for num_steps in (8, 16, 32, 64, 128):
    table = remdm_jax.build_table(sampler_config(strategy="loop", num_steps=num_steps,
                                                eta=0.05))
    sigma = np.asarray(table.sigma, np.float64)
    unmask = np.asarray(table.unmask_base, np.float64) + sigma * np.asarray(
        table.unmask_per_sigma, np.float64)
    final = exact_ab_distribution(sigma, unmask)
    errors.append(final[0, 0] + final[1, 1])
  assert all(a > b for a, b in zip(errors, errors[1:])), errors


def test_each_extra_loop_step_lowers_impossible_pairs():
  """Brief section 10, exactly: phase 1 (4 MDLM steps up to alpha_on = 0.9), k loop steps
  (alpha held, sigma = 0.01), phase 3 (2 MDLM steps); P(AA) + P(BB) falls strictly with k."""
  alpha_on, eta = 0.9, 0.01
  alphas1, alphas3 = np.linspace(0.0, alpha_on, 5), np.linspace(alpha_on, 1.0, 3)
  def mdlm_steps(alphas):
    a_t, a_s = alphas[:-1], alphas[1:]
    return np.zeros_like(a_t), (a_s - a_t) / (1.0 - a_t)
  (r1, u1), (r3, u3) = mdlm_steps(alphas1), mdlm_steps(alphas3)
  errors = []
  for k in range(0, 30):
    r2, u2 = np.full(k, eta), np.full(k, eta * alpha_on / (1 - alpha_on))
    final = exact_ab_distribution(np.concatenate([r1, r2, r3]), np.concatenate([u1, u2, u3]))
    errors.append(final[0, 0] + final[1, 1])
  assert all(a > b for a, b in zip(errors, errors[1:])), errors


# --- Keys, batch splits and devices. -----------------------------------------------------
def _mlp_denoiser_and_params(vocab=MASK_ID + 1, hidden=16):
  keys = jax.random.split(jax.random.key(42), 3)
  params = {"embed": jax.random.normal(keys[0], (vocab, hidden)),
            "mix": jax.random.normal(keys[1], (hidden, hidden)) / 4,
            "out": jax.random.normal(keys[2], (hidden, vocab))}

  def apply(params, z, t):
    h = params["embed"][z]                                     # [B, L, H]
    h = h + jnp.tanh(jnp.mean(h, axis=1, keepdims=True) @ params["mix"])
    return (h @ params["out"]) * (1.0 + t[:, None, None])       # [B, L, V]
  return apply, params


def test_same_tokens_on_one_and_eight_devices_and_any_batch_split():
  assert len(jax.devices()) == 8
  apply, params = _mlp_denoiser_and_params()
  cfg = sampler_config(strategy="loop", num_steps=32, eta=0.05, top_p=0.9)
  key = jax.random.key(7)

  def run(params, key, batch, first, sharding=None):
    return remdm_jax.sample(key, lambda z, t: apply(params, z, t), cfg, batch_size=batch,
                            seq_len=L, mask_id=MASK_ID, first_index=first,
                            batch_sharding=sharding)

  single = jax.jit(run, static_argnums=(2, 3))(params, key, 16, 0)
  mesh = Mesh(np.array(jax.devices()), ("data",))
  sharding = NamedSharding(mesh, P("data"))
  sharded = jax.jit(run, static_argnums=(2, 3, 4),
                    in_shardings=(NamedSharding(mesh, P()), None),
                    out_shardings=sharding)(params, key, 16, 0, sharding)
  assert len({s.device for s in sharded.addressable_shards}) == 8
  np.testing.assert_array_equal(np.asarray(single), np.asarray(sharded))
  halves = [jax.jit(run, static_argnums=(2, 3))(params, key, 8, first) for first in (0, 8)]
  np.testing.assert_array_equal(np.asarray(single), np.concatenate(halves))
  legacy = jax.jit(run, static_argnums=(2, 3))(params, jax.random.PRNGKey(7), 16, 0)
  np.testing.assert_array_equal(np.asarray(single), np.asarray(legacy))


def test_eta_sweep_compiles_once(mixture):
  chex.clear_trace_counter()

  @jax.jit
  @chex.assert_max_traces(n=1)
  def run(key, plan):
    return remdm_jax.sample_with_plan(key, mixture, plan, rule, batch_size=B, seq_len=L,
                                      mask_id=MASK_ID)
  for eta in (0.01, 0.02, 0.04):
    plan, rule = remdm_jax.build_plan(sampler_config(strategy="cap", num_steps=8, eta=eta,
                                                    top_p=0.9))
    run(jax.random.key(0), plan).block_until_ready()


def test_cache_skips_calls_and_keeps_tokens(mixture):
  calls = []

  def counted(z, t):
    jax.debug.callback(lambda: calls.append(1))
    return mixture(z, t)

  def run(cfg):
    out = remdm_jax.sample(jax.random.key(0), remdm_jax.Denoiser.wrap(counted, reads_t=False),
                           cfg, batch_size=2, seq_len=L, mask_id=MASK_ID)
    return np.asarray(out.block_until_ready())

  plain = run(sampler_config(strategy="mdlm", num_steps=64))
  uncached_calls, calls[:] = len(calls), []
  cached = run(sampler_config(strategy="mdlm", num_steps=64, cache=True))
  np.testing.assert_array_equal(plain, cached)
  # At most 2 * 6 steps change a token, so at most 12 + 1 scan calls; no position is still
  # masked after the last step at t_min = 1e-5, so the final removal calls nothing.
  assert uncached_calls == 64 and len(calls) <= 13


def test_final_removal_calls_the_denoiser_only_when_masks_remain(mixture):
  calls = []

  def counted(z, t):
    jax.debug.callback(lambda: calls.append(1))
    return mixture(z, t)

  for t_min, expected_calls in ((1e-5, 3), (0.9, 4)):   # alpha(0.9) = 0.1: masks remain
    calls[:] = []
    cfg = sampler_config(strategy="mdlm", num_steps=3, t_min=t_min)
    one = lambda: np.asarray(remdm_jax.sample(jax.random.key(0), counted, cfg, batch_size=4,
                                              seq_len=L, mask_id=MASK_ID))
    tokens = one()
    assert (tokens != MASK_ID).all() and len(calls) == expected_calls, (t_min, len(calls))


@pytest.mark.slow
def test_bfloat16_logits_change_only_the_rounding():
  """Logits exactly representable in bfloat16 give the same tokens in both dtypes (cached
  too); nudged logits are rounded back to them before anything else sees them."""
  table = jnp.array([0.0, 1.0, -2.0, 0.5, 3.0], jnp.float32)        # exact in bfloat16

  exact = remdm_jax.Denoiser.wrap(lambda z, t: jnp.broadcast_to(table, z.shape + (5,)),
                                 reads_t=False)

  def run(dtype, denoiser, cache=False):
    cfg = sampler_config(strategy="cap", num_steps=32, eta=0.05, top_p=0.95,
                        logits_dtype=dtype, cache=cache)
    return np.asarray(remdm_jax.sample(jax.random.key(4), denoiser, cfg, batch_size=64,
                                       seq_len=64, mask_id=MASK_ID))

  np.testing.assert_array_equal(run("float32", exact), run("bfloat16", exact))
  np.testing.assert_array_equal(run("float32", exact), run("bfloat16", exact, cache=True))
  nudged = lambda z, t: exact(z, t) * (1.0 + 2.0 ** -9)  # below half a bf16 spacing (2^-8)
  assert not np.array_equal(run("float32", nudged), run("float32", exact))  # 2 tokens differ
  np.testing.assert_array_equal(run("bfloat16", nudged), run("bfloat16", exact))


def test_position_chunk_and_draw_capacity_only_where_the_strategy_reads_them(mixture):
  """position_chunk is read by the rank strategies (topk) alone, draw_capacity by the
  Bernoulli ones alone; elsewhere each is refused, and a chunk must divide seq_len."""
  with pytest.raises(ValueError, match=r"position_chunk applies to .*\['topk'\].* not to "
                     r"'loop'; got position_chunk=3"):
    sampler_config(strategy="loop", position_chunk=3)
  with pytest.raises(ValueError, match="draw_capacity applies to .* not to 'topk'"):
    sampler_config(strategy="topk", draw_capacity=2)
  with pytest.raises(ValueError, match="position_chunk must divide seq_len 6, got 4"):
    _sample_mixture(sampler_config(strategy="topk", position_chunk=4), mixture, n=2)


def test_guidance_mixes_log_probs():
  cond = lambda z, t: jnp.log(jnp.broadcast_to(jnp.array([0.7, 0.2, 0.1]), z.shape + (3,)))
  uncond = lambda z, t: jnp.log(jnp.broadcast_to(jnp.array([0.2, 0.3, 0.5]), z.shape + (3,)))
  z, t = jnp.zeros((1, 2), jnp.int32), jnp.zeros((1,), jnp.float32)
  for gamma in (0.0, 1.0, 2.0):
    guided = remdm_jax.classifier_free_guidance(cond, uncond, gamma)(z, t)
    direct = np.array([0.7, 0.2, 0.1]) ** gamma * np.array([0.2, 0.3, 0.5]) ** (1 - gamma)
    np.testing.assert_allclose(np.exp(np.asarray(guided[0, 0])), direct / direct.sum(),
                               rtol=1e-5)


# --- Plans carry the switches they were built for. ------------------------------------------
@pytest.mark.slow
def test_a_plan_runs_as_its_config_would(mixture):
  """A top-p plan through `sample_with_plan` under a user's jit gives `sample`'s tokens for
  its own config, also when the caller's jit first traced a plan without top-p (the rule is
  part of the plan's structure: the second plan retraces instead of running without top-p)."""
  plain, topp = sampler_config("cap", eta=0.05), sampler_config("cap", eta=0.05, top_p=0.6)
  run = jax.jit(lambda k, plan: remdm_jax.sample_with_plan(
      k, mixture, plan, batch_size=B, seq_len=L, mask_id=MASK_ID))
  key = jax.random.key(5)
  for cfg in (plain, topp):
    np.testing.assert_array_equal(
        run(key, remdm_jax.build_plan(cfg)[0]),
        remdm_jax.sample(key, mixture, cfg, batch_size=B, seq_len=L, mask_id=MASK_ID))
  assert not np.array_equal(run(key, remdm_jax.build_plan(plain)[0]),
                            run(key, remdm_jax.build_plan(topp)[0]))


@pytest.mark.parametrize("other,named", [
    (sampler_config("cap", eta=0.05, num_steps=16, top_p=0.9),
     r"use_top_p: False -> True.*top_p < 1"),
    (sampler_config("topk", num_steps=16), r"select: 'bernoulli' -> 'rank'"),
    (sampler_config("conf", num_steps=16), r"conf_score: None -> 'prob'"),
    (sampler_config("cap", eta=0.05, num_steps=32), r"steps: 16 -> 32"),
])
def test_a_sampler_refuses_a_plan_of_other_switches(other, named, mixture):
  own = sampler_config("cap", eta=0.05, num_steps=16)
  sampler = remdm_jax.make_sampler(mixture, own, batch_size=B, seq_len=L, mask_id=MASK_ID)
  sampler(jax.random.key(0), plan=remdm_jax.build_plan(own.with_options(eta=0.02))[0])
  with pytest.raises(ValueError, match="plan was built from a config with other static "
                     "settings than this sampler's.*" + named):
    sampler(jax.random.key(0), plan=remdm_jax.build_plan(other)[0])
  with pytest.raises(TypeError, match="plan must be a remdm_jax.Plan .* got dict"):
    sampler(jax.random.key(0), plan={})
  plan, _ = remdm_jax.build_plan(own)
  with pytest.raises(ValueError, match="rule is not the plan's own"):
    remdm_jax.sample_with_plan(jax.random.key(0), mixture, plan, remdm_jax.build_plan(other)[1],
                               batch_size=B, seq_len=L, mask_id=MASK_ID)


def test_sample_jits_with_config_static(mixture):
  """The public function itself under jax.jit, config and sizes static, key traced."""
  jitted = jax.jit(remdm_jax.sample, static_argnums=(1, 2),
                   static_argnames=("batch_size", "seq_len", "mask_id"))
  cfg = sampler_config(strategy="loop", num_steps=16, eta=0.05, top_p=0.9)
  kwargs = dict(batch_size=B, seq_len=L, mask_id=MASK_ID)
  out = jitted(jax.random.key(9), mixture, cfg, **kwargs)
  eager = remdm_jax.sample(jax.random.key(9), mixture, cfg, **kwargs)
  chex.assert_type(out, jnp.int32)
  np.testing.assert_array_equal(np.asarray(out), np.asarray(eager))


# --- Non-finite logits are an error, never tokens. -------------------------------------------
def _broken_for_example(index, value, vocab=MASK_ID + 1):
  """Uniform logits, except `value` in every non-mask logit of example `index`."""
  def denoiser(z, t):
    logits = jnp.zeros(z.shape + (vocab,), jnp.float32)
    broken = jnp.arange(z.shape[0])[:, None, None] == index
    is_mask = (jnp.arange(vocab) == MASK_ID)[None, None, :]
    return jnp.where(broken & ~is_mask, value, logits)
  return remdm_jax.Denoiser.wrap(denoiser, reads_t=False)


@pytest.mark.parametrize("cfg,value", [
    (sampler_config(strategy="cap", num_steps=8, eta=0.1), jnp.nan),
    (sampler_config(strategy="loop", num_steps=8, eta=0.05, top_p=0.9), jnp.inf),
    (sampler_config(strategy="topk", num_steps=8), -jnp.inf),
    (sampler_config(strategy="mdlm", num_steps=8, cache=True), -jnp.inf),
    (sampler_config(strategy="conf", num_steps=8, top_p=0.5), jnp.nan),
], ids=["cap-nan", "loop-topp-+inf", "topk--inf", "mdlm-cache--inf", "conf-topp-nan"])
def test_nonfinite_logits_are_flagged_per_example(cfg, value):
  """Example 5 of 8 gets NaN, +inf, or -inf on every id but the mask: it alone is flagged;
  eager calls raise naming its global index (first_index 100 + 5)."""
  denoiser = _broken_for_example(5, value)
  kwargs = dict(batch_size=8, seq_len=L, mask_id=MASK_ID)
  run = jax.jit(lambda k: remdm_jax.sample(k, denoiser, cfg, return_nonfinite=True, **kwargs))
  _, flags = run(jax.random.key(0))
  np.testing.assert_array_equal(np.asarray(flags), np.arange(8) == 5)
  with pytest.raises(remdm_jax.NonFiniteLogitsError, match=r"1 of 8 examples \(global "
                     r"indices \[105\]\)"):
    remdm_jax.sample(jax.random.key(0), denoiser, cfg, first_index=100, **kwargs)


def test_nonfinite_logits_raise_under_jit_and_in_the_final_step():
  """Under jit the error surfaces when the result is computed; a denoiser that breaks only
  at the final noise-removal call (t = t_min = 0.5, where about half the positions are
  still masked) is caught too."""
  cfg = sampler_config(strategy="mdlm", num_steps=1, t_min=0.5)
  final_only = lambda z, t: jnp.where((t < 0.6)[:, None, None], jnp.nan,
                                      jnp.zeros(z.shape + (MASK_ID + 1,)))
  run = jax.jit(lambda k: remdm_jax.sample(k, final_only, cfg, batch_size=4, seq_len=64,
                                           mask_id=MASK_ID))
  with pytest.raises(Exception, match="non-finite logits"):
    jax.block_until_ready(run(jax.random.key(0)))


def test_nonfinite_logits_where_nothing_is_drawn_are_not_flagged():
  """-inf on some ids (a legitimate zero probability) and NaN at prompt positions, which are
  never drawn, leave the result valid."""
  def denoiser(z, t):
    logits = jnp.zeros(z.shape + (MASK_ID + 1,), jnp.float32).at[..., 0].set(-jnp.inf)
    return jnp.where((jnp.arange(z.shape[1]) == 0)[None, :, None], jnp.nan, logits)
  prompt = jnp.full((4, L), MASK_ID, jnp.int32).at[:, 0].set(2)
  cfg = sampler_config(strategy="cap", num_steps=8, eta=0.1)
  out, flags = remdm_jax.sample(jax.random.key(0), denoiser, cfg, batch_size=4, seq_len=L,
                                mask_id=MASK_ID, prompt=prompt, return_nonfinite=True)
  assert not np.asarray(flags).any() and (np.asarray(out)[:, 1:] != 0).all()


@pytest.mark.parametrize("kwargs,error,match", [
    (dict(strategy="cap", eta="0.1"), TypeError, "eta must be a number, got '0.1'"),
    (dict(strategy="cap", eta=float("nan")), ValueError, "eta must be a finite number, got nan"),
    (dict(num_steps=True), TypeError, "num_steps must be an integer, got True"),
    (dict(num_steps=10.0), TypeError, "num_steps must be an integer, got 10.0"),
    (dict(strategy="dfm", beta_scale=float("nan")), ValueError,
     "beta_scale must be a finite number"),
    (dict(cache="yes"), TypeError, "cache must be true or false, got 'yes'"),
    (dict(strategy=3), TypeError, "strategy must be a name such as .cap. or a strategy object, got 3"),
])
def test_config_values_are_typed_and_finite(kwargs, error, match):
  with pytest.raises(error, match=match):
    sampler_config(**kwargs)


def test_numpy_scalars_become_python_scalars():
  cfg = sampler_config(num_steps=np.int64(10), top_p=np.float32(0.5))
  assert type(cfg.num_steps) is int and type(cfg.top_p) is float and cfg.num_steps == 10
  assert hash(cfg) == hash(sampler_config(num_steps=10, top_p=float(np.float32(0.5))))


def test_traced_top_p_and_gamma_stay_data():
  """Inside jit the checks leave traced values alone (a sweep compiles once)."""
  filtered = jax.jit(remdm_jax.top_p_filter)(jnp.array([0.5, 0.3, 0.2]), jnp.float32(0.85))
  np.testing.assert_allclose(np.asarray(filtered), [0.625, 0.375, 0.0], rtol=1e-6)
  uniform = lambda z, t: jnp.zeros(z.shape + (3,))
  guided = jax.jit(lambda g: remdm_jax.classifier_free_guidance(uniform, uniform, g)(
      jnp.zeros((1, 2), jnp.int32), jnp.zeros((1,))))(jnp.float32(2.0))
  np.testing.assert_allclose(np.exp(np.asarray(guided)), 1 / 3, rtol=1e-6)


# --- Pinned tokens: the random stream of fixed-key configs, kept across refactors. ----------
PINNED_KEY = 2026
PINNED_SHAPE = (4, 8, 7)                  # B, L, V (the last id is the mask)
PINNED_CONFIGS = {
    "mdlm": dict(strategy="mdlm", num_steps=12),
    "cap": dict(strategy="cap", num_steps=12, eta=0.05),
    "rescale-topp": dict(strategy="rescale", num_steps=12, eta=0.5, top_p=0.9),
    "conf": dict(strategy="conf", num_steps=12),
    "conf-logprob-cap": dict(strategy="conf", num_steps=12, score="logprob",
                             base="cap", eta=0.1),
    "loop": dict(strategy="loop", num_steps=12, eta=0.05),
    "loop-rescale": dict(strategy="loop", num_steps=12, eta=0.5, base="rescale"),
    "loop-conf-topp": dict(strategy="loop", num_steps=12, eta=0.5, base="rescale",
                           conf="prob", top_p=0.8),
    "fb": dict(strategy="fb", num_steps=12),
    "dfm": dict(strategy="dfm", num_steps=12),
    "topk": dict(strategy="topk", num_steps=12),
    "topk-remask-temp": dict(strategy="topk", num_steps=12, remask=1, temperature=0.7),
    "mdlm-cache-standard": dict(strategy="mdlm", num_steps=12, cache=True, top_p=0.9,
                                top_p_mode="standard"),
    "cap-sort": dict(strategy="cap", num_steps=12, eta=0.05, top_p=0.9, top_p_impl="sort"),
    "cap-prompt": dict(strategy="cap", num_steps=12, eta=0.05),
    "loop-prompt": dict(strategy="loop", num_steps=12, eta=0.05),
}


def pinned_denoiser():
  """A fixed, context-dependent denoiser that ignores t (valid with the cache)."""
  b, l, v = PINNED_SHAPE
  rng = np.random.default_rng(1234)
  own = jnp.asarray(rng.standard_normal((v, v)), jnp.float32)
  left = jnp.asarray(rng.standard_normal((v, v)), jnp.float32)
  position = jnp.asarray(rng.standard_normal((l, v)), jnp.float32)

  def denoiser(z, t):
    del t
    return own[z] + 0.5 * left[jnp.roll(z, 1, axis=1)] + position[None]   # [B, L, V]

  return remdm_jax.Denoiser.wrap(denoiser, reads_t=False)


PINNED_FILE = pathlib.Path(__file__).parent / "pinned_tokens.json"


def pinned_tokens_of(name: str) -> list:
  """The tokens of the pinned config `name`, `[B][L]` ids."""
  b, l, v = PINNED_SHAPE
  prompt = None
  if name.endswith("prompt"):
    prompt = np.full((b, l), v - 1, np.int32)
    prompt[:, 0], prompt[1, 5] = 2, 4
  tokens = jax.jit(lambda k: remdm_jax.sample(
      k, pinned_denoiser(), sampler_config(**PINNED_CONFIGS[name]), batch_size=b, seq_len=l,
      mask_id=v - 1, prompt=prompt))(jax.random.key(PINNED_KEY))
  return np.asarray(tokens).tolist()


def pinned_tokens() -> dict:
  """The tokens of every pinned config, `{name: [B][L] ids}`."""
  return {name: pinned_tokens_of(name) for name in PINNED_CONFIGS}


def test_the_pinned_file_holds_every_pinned_config():
  assert sorted(json.loads(PINNED_FILE.read_text())) == sorted(PINNED_CONFIGS)


@pytest.mark.parametrize("name", sorted(PINNED_CONFIGS))
def test_fixed_key_tokens_are_pinned(name):
  """Regression pin: the tokens of 16 fixed-key configs. A change here is a change of random
  stream (or of the sampler's math) and must be announced in the README; then re-record with
  `python tests/test_sampling.py`. Recorded with per-position token keys and one Gumbel draw
  for both levels of the categorical draw."""
  expected = json.loads(PINNED_FILE.read_text())
  np.testing.assert_array_equal(pinned_tokens_of(name), expected[name], err_msg=name)


@pytest.mark.slow
def test_draw_rounds_of_any_capacity_give_the_pinned_tokens():
  """Decide, then draw: the Bernoulli strategies draw tokens only at the positions that
  unmask, K per example per round. With K = 1, 2, 7 and L (cycled over the pinned configs:
  prompts, top-p, cache, chunking, conf) the tokens equal the pinned ones, which were
  recorded from draws at every position."""
  expected = json.loads(PINNED_FILE.read_text())
  b, l, v = PINNED_SHAPE
  bernoulli = [name for name in PINNED_CONFIGS if not name.startswith("topk")]
  for name, capacity in zip(bernoulli, itertools.cycle([1, 2, 7, l])):
    prompt = None
    if name.endswith("prompt"):
      prompt = np.full((b, l), v - 1, np.int32)
      prompt[:, 0], prompt[1, 5] = 2, 4
    cfg = sampler_config(**PINNED_CONFIGS[name], draw_capacity=capacity)
    tokens = remdm_jax.sample(jax.random.key(PINNED_KEY), pinned_denoiser(), cfg,
                              batch_size=b, seq_len=l, mask_id=v - 1, prompt=prompt)
    np.testing.assert_array_equal(tokens, expected[name], err_msg=f"{name}, K={capacity}")


def test_draw_capacity_is_sized_from_the_schedule():
  plan, rule = remdm_jax.build_plan(sampler_config("loop", num_steps=256))
  assert rule.unmask_fraction == pytest.approx(0.9 / (0.45 * 256), rel=0.02)   # phase 1
  assert step_rules.draw_capacity(rule, 1024) == int(np.ceil(8.0 + 4 * np.sqrt(8.0) + 8))
  assert step_rules.draw_capacity(rule, 4) == 4
  swept = [remdm_jax.build_plan(sampler_config("cap", eta=eta, num_steps=64))[1]
           for eta in (0.0, 0.01, 0.05)]
  assert swept[0] == swept[1] == swept[2]   # eta sweeps keep one static rule


@pytest.mark.parametrize("cfg", [sampler_config(strategy="loop", num_steps=32, eta=0.1),
                                 sampler_config(strategy="cap", num_steps=16, eta=0.1),
                                 sampler_config(strategy="mdlm", num_steps=16)],
                         ids=lambda c: c.strategy.name)
def test_remasking_happens_where_sigma_says(cfg, mixture):
  """From the trajectory of 2000 sequences: no decoded token is remasked at a step with
  sigma = 0, and the remasks of the other steps total sum_i sigma_i * decoded_i within 5
  binomial sd (seed 3), where decoded_i counts the free decoded tokens before step i. The
  trajectory's own records agree with a direct diff of its steps and with the final tokens."""
  plan, rule = remdm_jax.build_plan(cfg)
  n, length = 2000, MIXTURE_SEQS.shape[1]
  trajectory = remdm_jax.sample(jax.random.key(3), mixture, cfg, batch_size=n,
                                seq_len=length, mask_id=MASK_ID, return_trajectory=True)
  after = np.asarray(trajectory.steps)
  before = np.concatenate([np.full((1, n, length), MASK_ID), after[:-1]])
  np.testing.assert_array_equal(trajectory.remasked, (before != MASK_ID) & (after == MASK_ID))
  np.testing.assert_array_equal(trajectory.unmasked, (before == MASK_ID) & (after != MASK_ID))
  final = np.asarray(trajectory.tokens)
  assert np.all((final == after[-1]) | (after[-1] == MASK_ID))
  assert len(trajectory.t) == after.shape[0] == plan.table.t.shape[0]
  decoded = np.sum(before != MASK_ID, axis=(1, 2))                          # [steps]
  remasked = np.sum(np.asarray(trajectory.remasked), axis=(1, 2))           # [steps]
  sigma = np.asarray(plan.table.sigma, np.float64)
  assert np.all(remasked[sigma == 0] == 0)
  expected = np.sum(sigma * decoded)
  sd = np.sqrt(np.sum(sigma * (1 - sigma) * decoded))
  assert abs(remasked.sum() - expected) <= 5 * sd + 1e-9, (remasked.sum(), expected)
  if cfg.strategy.name != "mdlm":
    assert remasked.sum() > 100


if __name__ == "__main__":   # re-record the pinned tokens after an announced stream change
  PINNED_FILE.write_text("{\n" + ",\n".join(f"  {json.dumps(k)}: {json.dumps(v)}"
                                              for k, v in pinned_tokens().items()) + "\n}\n")
