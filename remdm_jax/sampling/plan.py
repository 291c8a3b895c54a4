"""A config becomes a plan: for the diffusion strategies a per-step table of arrays (`Plan`) and
static switches (`StepRule`, the decoder that runs it, `remdm_jax.sampling.steps`).

Per step `i` (from time `t_i` to `s_i < t_i`), for a position not fixed by a prompt:

- decoded (`z_t != m`): remasked with probability `sigma_i` (times the conf weight);
- masked: unmasked with probability `unmask_base_i + sigma_i * unmask_per_sigma_i`, where
  `unmask_base = (alpha_s - alpha_t) / (1 - alpha_t)` (MDLM) and
  `unmask_per_sigma = alpha_t / (1 - alpha_t)` (paper eq. 6).

Valid iff `0 <= sigma <= sigma_max = min(1, (1 - alpha_s) / alpha_t)`. The table is computed on
the host in float64 from the strategy (`remdm_jax.sampling.strategies`) and checked;
`remdm_jax.sampling.steps` runs one scan over it for every strategy.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np

from remdm_jax import schedules
from remdm_jax.diffusion import sigma_max
from remdm_jax.sampling import blocks
from remdm_jax.sampling.config import SamplerConfig
from remdm_jax.sampling.decoder import Decoder
from remdm_jax.sampling.steps import Plan, StepRule, StepTable
from remdm_jax.sampling.strategies import safe_div
from remdm_jax.validation import ArgumentTypeError

__all__ = ["Plan", "StepRule", "StepTable", "build_plan", "build_table", "check_plan",
           "rule_differences"]


def rule_differences(built, given) -> list[str]:
  """What differs in the static part of two plans: the kind of plan, the number of steps and
  every field of the rule, as `"name: built -> given"` strings (empty when `given` runs where
  `built` does)."""
  if type(built) is not type(given):
    return [f"kind: {type(built).__name__} -> {type(given).__name__}"]
  differences = []
  steps = (built.table.t.shape[0], given.table.t.shape[0])
  if steps[0] != steps[1]:
    differences.append(f"steps: {steps[0]} -> {steps[1]}")
  for field in dataclasses.fields(built.rule):
    a, b = getattr(built.rule, field.name), getattr(given.rule, field.name)
    if a != b:
      shown = [f"{v:.4g}" if isinstance(v, float) else repr(v) for v in (a, b)]
      differences.append(f"{field.name}{_GLOSS.get(field.name, '')}: {shown[0]} -> {shown[1]}")
  return differences


_GLOSS = {"unmask_fraction": " (the largest share of positions one step unmasks, from the "
                             "strategy's grid and schedule)"}


def check_plan(plan):
  """`plan` if it is a plan from `build_plan` (its `rule` a `Decoder`), with its concrete
  scalars checked by its decoder (`StepRule.check_plan`, `BlockRule.check_plan`), else an
  `ArgumentTypeError` saying so.

  Raises:
    ArgumentTypeError: not a plan. ValueError: a concrete scalar out of its range.
  """
  if not isinstance(getattr(plan, "rule", None), Decoder):
    raise ArgumentTypeError(f"plan must be a remdm_jax.Plan from remdm_jax.build_plan(config), "
                            f"got {type(plan).__name__}")
  return plan.rule.check_plan(plan)


def _check_config(cfg) -> SamplerConfig:
  if not isinstance(cfg, SamplerConfig):
    raise ArgumentTypeError(f"config must be a SamplerConfig, got {type(cfg).__name__}")
  return cfg


def _host_table(cfg: SamplerConfig) -> tuple[dict, float]:
  """The table's fields as float64 / int32 NumPy arrays, and `max(alpha_s - alpha_t)`.

  Raises:
    ValueError: if a step's sigma leaves [0, sigma_max], naming the strategy and the bound.
  """
  strategy = _check_config(cfg).strategy
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


def build_table(cfg: SamplerConfig) -> StepTable:
  """Computes and validates the per-step table of a config (host side, float64 inside).

  Raises:
    ValueError: if a step's sigma leaves [0, sigma_max], naming the strategy and the bound;
      a block-decoding config (it has no diffusion-time table: `build_plan` gives its
      `BlockPlan`, `Sampler.num_steps(prompt)` its length).
  """
  if _check_config(cfg).strategy.select == "block":
    raise ValueError(f"strategy {cfg.strategy.name!r} decodes blocks and has no diffusion-time "
                     "table; build_plan(config) gives its BlockPlan and "
                     "make_sampler(...).num_steps(prompt) the steps it runs")
  return _to_table(_host_table(cfg)[0])


def build_plan(cfg: SamplerConfig) -> tuple[Plan, StepRule]:
  """Splits a config into scan data (`Plan`, a pytree) and static switches (`StepRule`); the
  plan carries its rule (`plan.rule is rule`), so it runs as its config would wherever it goes.

  Passing the `Plan` as a jit argument makes eta, top_p and temperature data: a sweep over
  them compiles once (the rule's `unmask_fraction` comes from the sigma-free part of the
  table, so it does not change with eta). Block decoding (strategy "llada") gives a
  `remdm_jax.sampling.blocks.BlockPlan` and its `BlockRule`.
  """
  if _check_config(cfg).strategy.select == "block":
    return blocks.build_block_plan(cfg)
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
