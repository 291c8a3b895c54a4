"""The diffusion-step decoder: MDLM and every ReMDM strategy as one scan over a step table.

Per step `i` (from time `t_i` to `s_i < t_i`), for a position not fixed by a prompt: a decoded
token is remasked with probability `sigma_i` (times the conf weight); a masked one is unmasked
with probability `unmask_base_i + sigma_i * unmask_per_sigma_i` (paper eq. 6), or, for
confidence decoding (`topk`), the most confident masked positions are unmasked and the least
confident decoded ones remasked. After the last step, one greedy noise-removal call decodes
what is still masked. This module holds the table's types, its building on the host in
float64 from the strategy (checked: `0 <= sigma <= sigma_max = min(1, (1 - alpha_s) /
alpha_t)`), and the scan (`StepRule.run`, the `Decoder` of the diffusion strategies).

References:
  Wang, Schiff, Sahoo, Kuleshov, "Remasking Discrete Diffusion Models with Inference-Time
  Scaling", NeurIPS 2025, arXiv 2503.00307 (sections 3-4, eq. 6).
  Sahoo et al., "Simple and Effective Masked Diffusion Language Models", 2024,
  arXiv 2406.07524 (SUBS, the final noise-removal step, caching).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from remdm_jax import schedules
from remdm_jax.diffusion import sigma_max
from remdm_jax.sampling.decoder import Decoder, Finish, Needs, RunShape, Scan, StepOut
from remdm_jax.sampling.rounds import in_rounds
from remdm_jax.sampling.step_rules import (draw_all, draw_capacity, draw_selected, greedy,
                                           select_bernoulli, select_rank, step_keys, token_logp)
from remdm_jax.sampling.strategies import safe_div
from remdm_jax.validation import check_scalar


class StepTable(NamedTuple):
  """Per-step arrays, all `[n]` (n = number of steps, `len(t)`); float32 unless stated."""

  t: jax.Array                  # time the denoiser sees at this step
  sigma: jax.Array              # base remasking probability (conf multiplies it per token)
  sigma_max: jax.Array          # min(1, (1 - alpha_s) / alpha_t), alpha_s at the step's end
  unmask_base: jax.Array        # (alpha_s - alpha_t) / (1 - alpha_t)
  unmask_per_sigma: jax.Array   # alpha_t / (1 - alpha_t)
  decoded_frac: jax.Array       # topk: fraction of free positions decoded after the step
  remask_count: jax.Array       # topk: tokens remasked at this step, int32


@dataclasses.dataclass(frozen=True)
class StepRule(Decoder):
  """The static part of a diffusion-step plan: switches that change the step's code
  (hashable, jit-static), and the decoder that runs the plan."""

  select: str = "bernoulli"   # bernoulli: per-token coin flips; rank: topk by confidence
  conf_score: str | None = None  # None, "prob" or "logprob": conf weighting of sigma
  top_p_mode: str = "reference"
  top_p_impl: str = "bisect"
  use_top_p: bool = False
  cache: bool = False
  logits_dtype: str = "auto"
  position_chunk: int = 0
  unmask_fraction: float = 1.0   # max over steps of alpha_s - alpha_t (sizes the draw rounds)
  draw_capacity: int = 0         # >0: positions drawn per example per round (else from above)

  def start(self, denoiser, plan, prompt, shape: RunShape, needs: Needs) -> Scan:
    return _start_steps(denoiser, plan, prompt, shape, needs)

  def check_plan(self, plan):
    """Concrete `top_p` in (0, 1], `temperature` in (0, inf), `t_final` in [0, 1)."""
    check_scalar("plan.top_p", plan.top_p, 0.0, 1.0, low_open=True)
    check_scalar("plan.temperature", plan.temperature, 0.0, low_open=True)
    check_scalar("plan.t_final", plan.t_final, 0.0, 1.0, high_open=True)
    return plan

  def trajectory_length(self, plan, extent: int) -> int:
    return int(plan.table.t.shape[0])

  def times(self, plan, steps: int) -> jax.Array:
    return plan.table.t

  def check_call(self, denoiser, shape: RunShape) -> None:
    """`position_chunk` divides L; `cache` only for a denoiser that ignores t."""
    if self.position_chunk and shape.seq_len % self.position_chunk:
      raise ValueError(f"position_chunk must divide seq_len {shape.seq_len}, got "
                       f"{self.position_chunk}")
    if self.cache and denoiser.reads_t:
      raise ValueError(
          "cache=True reuses a step's logits when no token changed, which is exact only for "
          "a denoiser that ignores t; this one reads t (reads_t=True; a plain function is "
          "assumed to). Declare a time-free function with remdm_jax.Denoiser.wrap(fn, "
          "reads_t=False), or sample with cache=False")


@functools.partial(jax.tree_util.register_dataclass,
                   data_fields=["table", "top_p", "temperature", "t_final"],
                   meta_fields=["rule"])
@dataclasses.dataclass(frozen=True)
class Plan:
  """Everything the scan consumes as data (the table and the scalar knobs, pytree leaves), and
  the static rule they were built for (part of the pytree structure, so a plan always runs
  under its own switches and a jitted function retraces for a plan of another rule)."""

  table: StepTable
  top_p: jax.Array        # [] float32
  temperature: jax.Array  # [] float32
  t_final: jax.Array      # [] float32, time of the final noise-removal call
  rule: StepRule          # static: the switches of the config the plan was built from


def _as_logits_dtype(logits: jax.Array, rule: StepRule) -> jax.Array:
  """Logits held in `rule.logits_dtype` ("auto": as emitted); probabilities are float32 later."""
  return logits if rule.logits_dtype == "auto" else logits.astype(rule.logits_dtype)


def _step_output(denoiser, rule: StepRule):
  """`(fn(z, t), split)`: what a step computes at every position (and what the cache holds):
  the features of a split denoiser for the Bernoulli rules, else the logits in
  `rule.logits_dtype`."""
  if rule.select == "bernoulli" and denoiser.is_split:
    return denoiser.features, True
  return (lambda z, t: _as_logits_dtype(denoiser(z, t), rule)), False


def _row_reader(denoiser, computed, t, split, rule):
  """`rows_at(positions [B, K] int32) -> logits [B, K, V]` from what a step computed at
  every position (`_step_output`): gathered logits, or the head applied to the features of
  the rows that predict those positions (`Denoiser.feature_rows`)."""
  gather = lambda rows: jnp.take_along_axis(computed, rows[..., None], axis=1)
  if split:
    return lambda positions: _as_logits_dtype(
        denoiser.head(gather(denoiser.feature_rows(positions)), t), rule)
  return gather


class _Context(NamedTuple):
  """What every step of one run shares (built once, outside the step)."""

  denoiser: object
  plan: Plan
  fixed: jax.Array      # [B, L] bool: prompt positions
  mask_id: int
  capacity: int         # positions drawn per example per round (Bernoulli rules)
  split: bool           # the step computed features of a split denoiser
  needs: Needs          # what each StepOut carries beyond the tokens


class _Transition(NamedTuple):
  """What a step's rule decided, each `[B, L]`."""

  unmask: jax.Array     # bool
  remask: jax.Array     # bool
  tokens: jax.Array     # int32, meaningful where unmask
  token_prob: jax.Array  # float32, x_theta's probability of the token
  bad: jax.Array        # bool, a drawn row had no distribution
  logp: jax.Array | None  # float32, token_logp (when ctx.needs.logp)


def _rank_transition(ctx: _Context, keys, row, z, psi, computed, t) -> _Transition:
  """Confidence ranking: every masked position is drawn, then the most confident unmask."""
  rule = ctx.plan.rule
  tokens, token_prob, bad, *logp = draw_all(keys[:, 2], computed, ctx.plan, rule, ctx.mask_id,
                                            ctx.needs.logp)
  unmask, remask = select_rank(keys, row, z, ctx.fixed, ctx.mask_id, psi, token_prob)
  return _Transition(unmask, remask, tokens, token_prob, bad & (z == ctx.mask_id),
                     *(logp or [None]))


def _bernoulli_transition(ctx: _Context, keys, row, z, psi, computed, t) -> _Transition:
  """Eq. 6 coin flips first, then draws only where a token is unmasked (a split denoiser's
  head runs on those rows only)."""
  rule = ctx.plan.rule
  unmask, remask = select_bernoulli(keys, row, rule, z, ctx.fixed, ctx.mask_id, psi)
  rows_at = _row_reader(ctx.denoiser, computed, t, ctx.split, rule)
  tokens, token_prob, bad, *logp = draw_selected(keys[:, 2], rows_at, unmask, ctx.capacity,
                                                 ctx.plan, rule, ctx.mask_id, ctx.needs.logp)
  return _Transition(unmask, remask, tokens, token_prob, bad & unmask, *(logp or [None]))


_TRANSITIONS: dict[str, Callable] = {"rank": _rank_transition,
                                     "bernoulli": _bernoulli_transition}


def _all_logits(ctx: _Context, computed, t) -> jax.Array:
  """The logits `[B, L, V]` of every position from what a step computed (a split denoiser's
  head then runs on every row)."""
  if not ctx.split:
    return computed
  batch, length = computed.shape[0], ctx.fixed.shape[1]
  positions = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (batch, length))
  return _row_reader(ctx.denoiser, computed, t, True, ctx.plan.rule)(positions)


def _make_step(ctx: _Context):
  """The scan body, shared by every strategy: `step((z, psi, nonfinite, cache), (index,
  row), keys) -> (carry, StepOut)`; the transition rule is picked here, once."""
  rule, mask_id = ctx.plan.rule, ctx.mask_id
  output, _ = _step_output(ctx.denoiser, rule)
  transition = _TRANSITIONS[rule.select]

  def step(carry, xs, keys):
    z, psi, nonfinite, cache = carry
    index, row = xs
    t = jnp.full(z.shape[:1], row.t, jnp.float32)
    call = lambda: output(z, t)   # split: the trunk everywhere, the head only where drawn
    called = jnp.bool_(True)
    if rule.cache:
      cached, called = cache
      computed = jax.lax.cond(called, call, lambda: cached)
    else:
      computed = call()
    move = transition(ctx, step_keys(keys), row, z, psi, computed, t)
    z_next = jnp.where(move.unmask, move.tokens, jnp.where(move.remask, mask_id, z))
    psi_next = jnp.where(move.unmask, move.token_prob, jnp.where(move.remask, 0.0, psi))
    nonfinite = nonfinite | jnp.any(move.bad, axis=-1)
    if rule.cache:
      cache = (computed, jnp.any(z_next != z))
    logp = jnp.where(move.unmask, move.logp, 0.0) if ctx.needs.logp else None
    predicted = None
    if ctx.needs.predicted:
      predicted = jnp.where(z_next == mask_id, greedy(_all_logits(ctx, computed, t),
                                                      mask_id)[0], z_next)
    out = StepOut(z_next, move.unmask, move.remask, called, jnp.bool_(True), logp, predicted)
    return (z_next, psi_next, nonfinite, cache), out

  return step


def _final_denoise(ctx: _Context, z, t_final, nonfinite) -> Finish:
  """MDLM noise removal: still-masked positions take `argmax x_theta` (no top-p). The
  denoiser is not called at all when no position is still masked; a split denoiser's head
  runs only on the still-masked rows (in rounds of K), a plain one's logits are read whole.
  A still-masked position with no finite largest logit (NaN, +inf or all -inf) flags its
  row."""
  masked = z == ctx.mask_id                                            # [B, L]
  rule, mask_id = ctx.plan.rule, ctx.mask_id
  output, split = _step_output(ctx.denoiser, rule)

  def decode(logits):
    best, bad = greedy(logits, mask_id)
    return (best, bad) + ((token_logp(logits, best, mask_id),) if ctx.needs.logp else ())

  def remove():
    t = jnp.full(z.shape[:1], t_final, jnp.float32)
    computed = output(z, t)
    if split:
      rows_at = _row_reader(ctx.denoiser, computed, t, split, rule)
      best, bad, *logp = in_rounds(masked, draw_capacity(rule, z.shape[1]),
                                   lambda positions: decode(rows_at(positions)))
    else:
      best, bad, *logp = decode(computed)
    return (jnp.where(masked, best, z), jnp.any(masked & bad, axis=-1),
            *[jnp.where(masked, v, 0.0) for v in logp])

  def keep():
    return (z, jnp.zeros(z.shape[:1], bool)) + ((jnp.zeros(z.shape, jnp.float32),)
                                                if ctx.needs.logp else ())

  called = jnp.any(masked)
  tokens, bad, *logp = jax.lax.cond(called, remove, keep)
  return Finish(tokens, nonfinite | bad, masked, called, *(logp or [None]))


def _start_steps(denoiser, plan: Plan, prompt, shape: RunShape, needs: Needs) -> Scan:
  """`StepRule.start`: the scan over the table, then the final noise removal."""
  rule, batch_size, mask_id = plan.rule, shape.batch_size, shape.mask_id
  z = (jnp.full((batch_size, shape.seq_len), mask_id, jnp.int32) if prompt is None
       else prompt)
  psi = jnp.zeros(z.shape, jnp.float32)
  if shape.batch_sharding is not None:
    z, psi = jax.lax.with_sharding_constraint((z, psi), shape.batch_sharding)
  fixed = z != mask_id
  cache = None
  if rule.cache:
    out = jax.eval_shape(_step_output(denoiser, rule)[0], z,
                         jnp.zeros((batch_size,), jnp.float32))
    cache = (jnp.zeros(out.shape, out.dtype), jnp.bool_(True))
  ctx = _Context(denoiser, plan, fixed, mask_id, draw_capacity(rule, fixed.shape[1]),
                 _step_output(denoiser, rule)[1], needs)
  num_steps = plan.table.t.shape[0]
  carry = (z, psi, jnp.zeros((batch_size,), bool), cache)
  return Scan(carry, (jnp.arange(num_steps, dtype=jnp.int32), plan.table),
              _make_step(ctx),
              lambda carry: _final_denoise(ctx, carry[0], plan.t_final, carry[2]))


def _host_table(cfg) -> tuple[dict, float]:
  """The table's fields as float64 / int32 NumPy arrays, and `max(alpha_s - alpha_t)`.

  Raises:
    ValueError: if a step's sigma leaves [0, sigma_max], naming the strategy and the bound.
  """
  strategy = cfg.strategy
  schedule = schedules.get_schedule(cfg.schedule)
  grid = strategy.grid(cfg.num_steps, cfg.t_min)          # [n + 1] f64
  t, s = grid[:-1], grid[1:]
  a_t, a_s = strategy.alpha(schedule, t), strategy.alpha(schedule, s)
  smax = sigma_max(a_t, a_s)
  sigma = strategy.sigma(t, s, a_t, a_s, smax)
  if np.any(sigma > smax * (1.0 + 1e-9)) or np.any(sigma < 0.0):
    bound = float(np.min(smax[sigma > 0])) if np.any(sigma > 0) else 0.0
    raise ValueError(f"{strategy} gives sigma outside [0, sigma_max]; the smallest "
                     f"sigma_max on this grid is {bound:.4g}")
  decoded_frac, remask = strategy.rank_counts(t, s)
  fields = dict(t=t, sigma=sigma, sigma_max=smax,
                unmask_base=safe_div(a_s - a_t, 1.0 - a_t, at_zero=0.0),
                unmask_per_sigma=safe_div(a_t, 1.0 - a_t, at_zero=0.0),
                decoded_frac=decoded_frac, remask_count=remask)
  return fields, float(np.max(a_s - a_t))


def _to_table(fields: dict) -> StepTable:
  """float32 arrays (int32 for the remask counts)."""
  return StepTable(**{name: jnp.asarray(value, jnp.int32 if name == "remask_count"
                                        else jnp.float32) for name, value in fields.items()})


def step_table(cfg) -> StepTable:
  """The per-step table of a `SamplerConfig` (`remdm_jax.sampling.plan.build_table`)."""
  return _to_table(_host_table(cfg)[0])


def build_steps_plan(cfg) -> tuple[Plan, StepRule]:
  """A `SamplerConfig` as a `Plan` and its `StepRule` (`SamplerConfig.build_plan`)."""
  fields, unmask_fraction = _host_table(cfg)
  rule = StepRule(select=cfg.strategy.select, conf_score=cfg.strategy.conf_score,
                  top_p_mode=cfg.top_p_mode, top_p_impl=cfg.top_p_impl,
                  use_top_p=cfg.top_p < 1.0, cache=cfg.cache,
                  logits_dtype=cfg.logits_dtype, position_chunk=cfg.position_chunk,
                  unmask_fraction=unmask_fraction, draw_capacity=cfg.draw_capacity)
  plan = Plan(table=_to_table(fields), top_p=jnp.asarray(cfg.top_p, jnp.float32),
              temperature=jnp.asarray(cfg.temperature, jnp.float32),
              t_final=jnp.asarray(cfg.t_min, jnp.float32), rule=rule)
  return plan, rule
