"""Strategies as data: a `SamplerConfig` becomes a per-step table of arrays.

Every strategy of the ReMDM paper (Wang et al. 2025, arXiv 2503.00307, section 4) differs from
the others only in (a) its time grid, (b) its schedule `alpha~(t)` on that grid and (c) the
remasking probability `sigma` of each step; confidence weighting (conf) and rank selection
(topk) are per-token rules switched by a static flag. This module computes the table on the
host in float64 and checks it; `sampling.py` runs one scan over it for every strategy.

Per step `i` (from time `t_i` to `s_i < t_i`), for a position not fixed by a prompt:
  - decoded (`z_t != m`): remasked with probability `sigma_i` (times the conf weight);
  - masked: unmasked with probability `unmask_base_i + sigma_i * unmask_per_sigma_i`, where
    `unmask_base = (alpha_s - alpha_t) / (1 - alpha_t)` (MDLM) and
    `unmask_per_sigma = alpha_t / (1 - alpha_t)` (paper eq. 6).
Valid iff `0 <= sigma <= sigma_max = min(1, (1 - alpha_s) / alpha_t)`.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from remdm_jax import schedules
from remdm_jax.config import SamplerConfig
from remdm_jax.validation import ArgumentTypeError


class StepTable(NamedTuple):
  """Per-step arrays, all `[n]` (n = number of steps); float32 unless stated."""

  t: jax.Array                  # time the denoiser sees at this step
  alpha_t: jax.Array            # alpha~ at t
  alpha_s: jax.Array            # alpha~ at s (the step's target time)
  sigma: jax.Array              # base remasking probability (conf multiplies it per token)
  sigma_max: jax.Array          # min(1, (1 - alpha_s) / alpha_t)
  unmask_base: jax.Array        # (alpha_s - alpha_t) / (1 - alpha_t)
  unmask_per_sigma: jax.Array   # alpha_t / (1 - alpha_t)
  decoded_frac: jax.Array       # topk: fraction of free positions decoded after the step
  remask_count: jax.Array       # topk: tokens remasked at this step, int32


class Plan(NamedTuple):
  """Everything the scan consumes as data: the table and the scalar knobs."""

  table: StepTable
  top_p: jax.Array        # [] float32
  temperature: jax.Array  # [] float32
  t_final: jax.Array      # [] float32, time of the final noise-removal call


@dataclasses.dataclass(frozen=True)
class StepRule:
  """The static part: switches that change the step's code (hashable, jit-static)."""

  select: str = "bernoulli"   # bernoulli: per-token coin flips; rank: topk by confidence
  conf_score: str | None = None  # None, "prob" or "logprob": conf weighting of sigma
  top_p_mode: str = "reference"
  top_p_impl: str = "bisect"
  use_top_p: bool = False
  cache: bool = False
  logits_dtype: str = "float32"
  position_chunk: int = 0


def _safe_div(num: np.ndarray, den: np.ndarray, at_zero: float) -> np.ndarray:
  """`num / den`, with `at_zero` where `den == 0`."""
  out = np.full_like(num, at_zero)
  np.divide(num, den, out=out, where=den != 0)
  return out


def sigma_max(alpha_t, alpha_s):
  """`min(1, (1 - alpha_s) / alpha_t)` (1 where `alpha_t = 0`), the largest valid remasking
  probability; NumPy (host tables) or JAX (training losses) arrays."""
  xp = schedules.array_module(alpha_t)
  positive = alpha_t > 0
  ratio = (1.0 - alpha_s) / xp.where(positive, alpha_t, 1.0)
  return xp.where(positive, xp.minimum(1.0, ratio), 1.0)


def base_sigma(name: str, eta, smax):
  """The sigma rules shared by strategies and the ReMDM NELBO: constant, cap, rescale, max
  (and zero for mdlm / topk); NumPy or JAX arrays shaped like `smax`."""
  xp = schedules.array_module(smax)
  rules = {
      "constant": lambda: xp.full_like(smax, eta),
      "cap": lambda: xp.minimum(eta, smax),
      "rescale": lambda: eta * smax,
      "max": lambda: smax,
      "mdlm": lambda: xp.zeros_like(smax),
      "topk": lambda: xp.zeros_like(smax),
  }
  if name not in rules:
    raise ValueError(f"unknown sigma rule {name!r}; choose from {sorted(rules)}")
  return rules[name]()


def _uniform_grid(cfg: SamplerConfig) -> np.ndarray:
  return schedules.uniform_grid(cfg.num_steps, cfg.t_min)


def dfm_beta(cfg: SamplerConfig, t: np.ndarray) -> np.ndarray:
  """DFM corrector strength `beta_t = scale * t^power * (1 - t)^power`."""
  return cfg.dfm_beta_scale * t ** cfg.dfm_beta_power * (1.0 - t) ** cfg.dfm_beta_power


def _dfm_grid(cfg: SamplerConfig) -> np.ndarray:
  """The reference DFM adaptive grid, computed on the host for `alpha = 1 - t`.

  `dt = min(1 / T, 1 / (a_t / t + b_t / (1 - t)))`, `a = 1 + beta`, `b = beta`, so that the
  total jump rate times `dt` stays <= 1. At `t = 1` no token is decoded yet and the remask rate
  is moot, so the first step is `1 / T`. The grid stops at `t_min`.
  """
  ts = [1.0]
  while ts[-1] > cfg.t_min:
    t = ts[-1]
    beta = dfm_beta(cfg, np.float64(t))
    rate = (1.0 + beta) / t + (beta / (1.0 - t) if t < 1.0 else 0.0)
    dt = min(1.0 / cfg.num_steps, 1.0 / rate)
    ts.append(max(t - dt, cfg.t_min))
  return np.asarray(ts, dtype=np.float64)


def _loop_alpha(cfg: SamplerConfig, t: np.ndarray) -> np.ndarray:
  """Piecewise `alpha~(t)` of ReMDM-loop (paper section 4.2)."""
  phase1 = cfg.alpha_on * (1.0 - t) / (1.0 - cfg.t_on)
  phase3 = 1.0 - (1.0 - cfg.alpha_on) * t / cfg.t_off
  return np.where(t > cfg.t_on, phase1, np.where(t > cfg.t_off, cfg.alpha_on, phase3))


def loop_phase(cfg: SamplerConfig, t: np.ndarray, s: np.ndarray) -> np.ndarray:
  """Phase (1, 2 or 3) of each step from `t` to `s`; `[n] int`.

  Phase 2 holds the steps lying wholly in `[t_off, t_on]`, where `alpha~` is constant and
  `sigma_max = (1 - alpha_on) / alpha_on`; the step that crosses `t_off` is an MDLM step of
  phase 3, so every step is a valid posterior of the piecewise schedule.
  """
  return np.where(t > cfg.t_on, 1, np.where(s >= cfg.t_off, 2, 3))


def _schedule_alpha(cfg: SamplerConfig, t: np.ndarray) -> np.ndarray:
  return schedules.get_schedule(cfg.schedule).alpha(t)


def _sigma_plain(cfg, t, s, a_t, a_s, smax):
  return base_sigma(cfg.sigma_base, cfg.eta, smax)


def _sigma_fb(cfg, t, s, a_t, a_s, smax):
  """Forward-backward corrector: `(alpha_s - alpha_t) / alpha_t`, clipped to sigma_max."""
  return np.minimum(_safe_div(a_s - a_t, a_t, at_zero=np.inf), smax)


def _sigma_dfm(cfg, t, s, a_t, a_s, smax):
  """DFM corrector: `beta_t (alpha_s - alpha_t) / alpha_t`, clipped to sigma_max."""
  return np.minimum(_safe_div(dfm_beta(cfg, t) * (a_s - a_t), a_t, at_zero=np.inf), smax)


def _sigma_loop(cfg, t, s, a_t, a_s, smax):
  in_phase2 = loop_phase(cfg, t, s) == 2
  return np.where(in_phase2, base_sigma(cfg.sigma_base, cfg.eta, smax), 0.0)


@dataclasses.dataclass(frozen=True)
class Strategy:
  """How a named strategy builds its table: grid, schedule and sigma rule."""

  grid: Callable[[SamplerConfig], np.ndarray]
  alpha: Callable[[SamplerConfig, np.ndarray], np.ndarray]
  sigma: Callable[..., np.ndarray]
  select: str = "bernoulli"


STRATEGIES = {
    "mdlm": Strategy(_uniform_grid, _schedule_alpha, _sigma_plain),
    "cap": Strategy(_uniform_grid, _schedule_alpha, _sigma_plain),
    "rescale": Strategy(_uniform_grid, _schedule_alpha, _sigma_plain),
    "conf": Strategy(_uniform_grid, _schedule_alpha, _sigma_plain),
    "loop": Strategy(_uniform_grid, _loop_alpha, _sigma_loop),
    "fb": Strategy(_uniform_grid, _schedule_alpha, _sigma_fb),
    "dfm": Strategy(_dfm_grid, _schedule_alpha, _sigma_dfm),
    "topk": Strategy(_uniform_grid, _schedule_alpha, _sigma_plain, select="rank"),
}


def _topk_counts(cfg: SamplerConfig, t: np.ndarray,
                 s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Decoded fraction after each step and tokens remasked per step, for topk.

  Without remasking, step i leaves a fraction (i + 1) / n decoded. With `topk_remask > 0`,
  the loop-phase steps hold the decoded count and remask (then re-unmask) `topk_remask`
  tokens each, and the other steps share the decoding evenly (the LLaDA ReMDM variant).
  """
  in_loop = (loop_phase(cfg, t, s) == 2) if cfg.uses_loop_phases else np.zeros(t.shape, bool)
  normal = np.cumsum(~in_loop)
  decoded_frac = normal / max(int(normal[-1]), 1)
  remask = np.where(in_loop, cfg.topk_remask, 0).astype(np.int32)
  return decoded_frac, remask


def build_table(cfg: SamplerConfig) -> StepTable:
  """Computes and validates the per-step table of a config (host side, float64 inside).

  Raises:
    ValueError: if a step's sigma leaves [0, sigma_max], naming eta and the valid bound.
  """
  strategy = STRATEGIES[cfg.strategy]
  grid = strategy.grid(cfg)                       # [n + 1] f64
  t, s = grid[:-1], grid[1:]
  a_t, a_s = strategy.alpha(cfg, t), strategy.alpha(cfg, s)
  smax = sigma_max(a_t, a_s)
  sigma = strategy.sigma(cfg, t, s, a_t, a_s, smax)
  too_big = sigma > smax * (1.0 + 1e-9)
  if np.any(too_big) or np.any(sigma < 0.0):
    bound = float(np.min(smax[sigma > 0])) if np.any(sigma > 0) else 0.0
    raise ValueError(
        f"eta={cfg.eta} gives sigma outside [0, sigma_max] for strategy {cfg.strategy!r}; "
        f"the smallest sigma_max on this grid is {bound:.4g}")
  unmask_base = _safe_div(a_s - a_t, 1.0 - a_t, at_zero=0.0)
  unmask_per_sigma = _safe_div(a_t, 1.0 - a_t, at_zero=0.0)
  decoded_frac, remask = _topk_counts(cfg, t, s)
  f32 = lambda x: jnp.asarray(x, dtype=jnp.float32)
  return StepTable(t=f32(t), alpha_t=f32(a_t), alpha_s=f32(a_s), sigma=f32(sigma),
                   sigma_max=f32(smax), unmask_base=f32(unmask_base),
                   unmask_per_sigma=f32(unmask_per_sigma), decoded_frac=f32(decoded_frac),
                   remask_count=jnp.asarray(remask, dtype=jnp.int32))


def build_plan(cfg: SamplerConfig) -> tuple[Plan, StepRule]:
  """Splits a config into scan data (`Plan`, a pytree) and static switches (`StepRule`).

  Passing the `Plan` as a jit argument makes eta, top_p and temperature data: a sweep over
  them compiles once.
  """
  if not isinstance(cfg, SamplerConfig):
    raise ArgumentTypeError(f"config must be a SamplerConfig, got {type(cfg).__name__}")
  table = build_table(cfg)
  plan = Plan(table=table, top_p=jnp.asarray(cfg.top_p, jnp.float32),
              temperature=jnp.asarray(cfg.temperature, jnp.float32),
              t_final=jnp.asarray(cfg.t_min, jnp.float32))
  rule = StepRule(select=STRATEGIES[cfg.strategy].select,
                  conf_score=cfg.conf_score if cfg.uses_conf else None,
                  top_p_mode=cfg.top_p_mode, top_p_impl=cfg.top_p_impl,
                  use_top_p=cfg.top_p < 1.0, cache=cfg.cache,
                  logits_dtype=cfg.logits_dtype, position_chunk=cfg.position_chunk)
  return plan, rule
