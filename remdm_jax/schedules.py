"""Noise schedules alpha(t) and the sampler's time grids.

A schedule gives `alpha(t)`, the probability that a token is still clean at time `t` in
[0, 1] (decreasing, `alpha(0) ~ 1`, `alpha(1) ~ 0`), and its derivative. Every method accepts
NumPy input (host-side tables, computed in float64) or JAX input (traced training code) and
returns the same kind of array.

This module holds no sampling logic; `strategies.py` turns a schedule and a grid into the
per-step table the sampler consumes.

References:
  Sahoo et al., "Simple and Effective Masked Diffusion Language Models", 2024, arXiv 2406.07524.
  Shi et al., "Simplified and Generalized Masked Diffusion for Discrete Data", 2024,
  arXiv 2406.04329 (cosine and polynomial schedules).
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

from remdm_jax.validation import check_fields, check_int, check_range


def array_module(t):
  """NumPy for host values, jax.numpy for JAX arrays and tracers."""
  return jnp if isinstance(t, jax.Array) else np


@dataclasses.dataclass(frozen=True)
class LogLinear:
  """`alpha(t) = 1 - (1 - eps) t`: the MDLM default (its noise `-log alpha` is log-linear).

  Training uses `eps = 1e-3`; the reference sampler uses `eps = 0`, i.e. `alpha = 1 - t`.
  """

  eps: float = 0.0  # alpha(1) = eps; 0 for sampling, 1e-3 for MDLM training

  def __post_init__(self):
    check_fields(self)
    check_range("eps", self.eps, 0.0, 1.0, high_open=True)

  def alpha(self, t):
    return 1.0 - (1.0 - self.eps) * t

  def alpha_prime(self, t):
    return -(1.0 - self.eps) * array_module(t).ones_like(t)


@dataclasses.dataclass(frozen=True)
class Cosine:
  """`alpha(t) = (1 - eps) cos(pi t / 2)`."""

  eps: float = 0.0  # 1 - alpha(0)

  def __post_init__(self):
    check_fields(self)
    check_range("eps", self.eps, 0.0, 1.0, high_open=True)

  def alpha(self, t):
    return (1.0 - self.eps) * array_module(t).cos(0.5 * math.pi * t)

  def alpha_prime(self, t):
    return -(1.0 - self.eps) * 0.5 * math.pi * array_module(t).sin(0.5 * math.pi * t)


@dataclasses.dataclass(frozen=True)
class Linear:
  """MDLM's linear noise: `alpha(t) = exp(-(sigma_min + t (sigma_max - sigma_min)))`."""

  sigma_min: float = 0.0   # total noise at t = 0
  sigma_max: float = 10.0  # total noise at t = 1; alpha(1) = exp(-10) ~ 4.5e-5

  def __post_init__(self):
    check_fields(self)
    if not 0.0 <= self.sigma_min < self.sigma_max:
      raise ValueError(
          f"need 0 <= sigma_min < sigma_max, got sigma_min={self.sigma_min}, "
          f"sigma_max={self.sigma_max}")

  def alpha(self, t):
    return array_module(t).exp(-(self.sigma_min + t * (self.sigma_max - self.sigma_min)))

  def alpha_prime(self, t):
    return -(self.sigma_max - self.sigma_min) * self.alpha(t)


@dataclasses.dataclass(frozen=True)
class Polynomial:
  """`alpha(t) = 1 - t ** power` (power 1 is `LogLinear(0)`)."""

  power: float = 2.0  # > 0; larger keeps tokens clean longer

  def __post_init__(self):
    check_fields(self)
    check_range("power", self.power, 0.0, low_open=True)

  def alpha(self, t):
    return 1.0 - t ** self.power

  def alpha_prime(self, t):
    return -self.power * t ** (self.power - 1.0)


SCHEDULES = {"loglinear": LogLinear, "cosine": Cosine, "linear": Linear,
             "polynomial": Polynomial}


def total_noise(t, schedule=None):
  """MDLM's total noise `sigma(t) = -log alpha(t)`, the time input of its networks; the
  shape and array kind of `t`. Default schedule: log-linear with eps = 1e-3, as MDLM trains."""
  schedule = LogLinear(eps=1e-3) if schedule is None else schedule
  return -array_module(t).log(schedule.alpha(t))


def get_schedule(name: str, **kwargs):
  """Builds a schedule by name, e.g. `get_schedule("loglinear", eps=1e-3)`."""
  if name not in SCHEDULES:
    raise ValueError(f"unknown schedule {name!r}; choose from {sorted(SCHEDULES)}")
  known = {f.name for f in dataclasses.fields(SCHEDULES[name])}
  if set(kwargs) - known:
    raise ValueError(f"schedule {name!r} takes {sorted(known)}, got {sorted(kwargs)}")
  return SCHEDULES[name](**kwargs)


def uniform_grid(num_steps: int, t_min: float = 1e-5) -> np.ndarray:
  """The reference sampler's grid `linspace(1, t_min, num_steps + 1)`.

  Step `i` goes from `t_i` to `s_i = t_{i + 1}`.

  Returns:
    `[num_steps + 1] float64`, decreasing from 1 to `t_min`.
  """
  check_int("num_steps", num_steps, 1)
  check_range("t_min", t_min, 0.0, 1.0, high_open=True)
  return np.linspace(1.0, t_min, num_steps + 1, dtype=np.float64)
