"""A config becomes a plan: scan data (a pytree) and its static rule, the decoder that runs it.

A `SamplerConfig` (MDLM and the ReMDM strategies) gives a per-step table (`Plan`) and its
`StepRule` (`remdm_jax.sampling.steps`); a `BlockConfig` (block decoding) a `BlockPlan` and its
`BlockRule` (`remdm_jax.sampling.blocks`). Each config builds its own plan
(`config.build_plan()`); this module is the entry point, and checks plans a caller passes in.
"""

from __future__ import annotations

import dataclasses

from remdm_jax.sampling import steps
from remdm_jax.sampling.config import SamplerConfig
from remdm_jax.sampling.decoder import Decoder
from remdm_jax.sampling.steps import Plan, StepRule, StepTable
from remdm_jax.validation import ArgumentTypeError

__all__ = ["Plan", "StepRule", "StepTable", "build_plan", "build_table", "check_plan",
           "rule_differences"]


def rule_differences(built, given) -> list[str]:
  """What differs in the static part of two plans: the kind of plan, the number of steps and
  every field of the rule, as `"name: built -> given"` strings (empty when `given` runs where
  `built` does)."""
  if type(built) is not type(given):
    return [f"kind: {type(built).__name__} -> {type(given).__name__}"]
  if type(built.rule) is not type(given.rule):
    return [f"kind: {type(built).__name__} ({type(built.rule).__name__}) -> "
            f"{type(given).__name__} ({type(given.rule).__name__})"]
  differences = []
  steps = (built.rule.trajectory_length(built, 1), given.rule.trajectory_length(given, 1))
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


def _check_config(cfg):
  """A config that builds a plan (`cfg.build_plan()`: `SamplerConfig`, `BlockConfig`, or a
  decoder's own config), else an `ArgumentTypeError`."""
  if not callable(getattr(cfg, "build_plan", None)):
    raise ArgumentTypeError(f"config must be a SamplerConfig or a BlockConfig (e.g. from "
                            f"remdm_jax.sampler_config), or a decoder's config with a "
                            f"build_plan() method, got {type(cfg).__name__}")
  return cfg


def build_table(cfg: SamplerConfig) -> StepTable:
  """Computes and validates the per-step table of a diffusion-step config (host side, float64
  inside).

  Raises:
    ValueError: if a step's sigma leaves [0, sigma_max], naming the strategy and the bound;
      a block-decoding config (it has no diffusion-time table: `build_plan` gives its
      `BlockPlan`, `Sampler.num_steps(prompt)` its length).
  """
  if not isinstance(_check_config(cfg), SamplerConfig):
    name = getattr(cfg, "name", type(cfg).__name__)
    raise ValueError(f"strategy {name!r} has no diffusion-time table (only the diffusion "
                     "strategies' SamplerConfig has one); build_plan(config) gives its plan "
                     "and make_sampler(...).num_steps(prompt) the steps it runs")
  return steps.step_table(cfg)


def build_plan(cfg) -> tuple:
  """Splits a config into scan data (a plan, a pytree) and its static rule, the decoder that
  runs it; the plan carries its rule (`plan.rule is rule`), so it runs as its config would
  wherever it goes. A `SamplerConfig` gives a `Plan` and its `StepRule`
  (`remdm_jax.sampling.steps`), a `BlockConfig` a `BlockPlan` and its `BlockRule`.

  Passing the plan as a jit argument makes eta, top_p and temperature (block decoding:
  temperature, threshold, cfg_scale) data: a sweep over them compiles once (the rule's
  `unmask_fraction` comes from the sigma-free part of the table, so it does not change with
  eta).
  """
  plan, rule = _check_config(cfg).build_plan()
  if not isinstance(rule, Decoder) or plan.rule is not rule:
    raise ArgumentTypeError(f"{type(cfg).__name__}.build_plan() must return (plan, rule) with "
                            f"plan.rule the rule, a remdm_jax.sampling.decoder.Decoder; got a "
                            f"{type(rule).__name__} rule")
  return plan, rule
