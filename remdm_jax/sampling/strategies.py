"""The sampling strategies: one frozen dataclass each, registered once by name.

Every strategy of the ReMDM paper (Wang et al. 2025, arXiv 2503.00307, section 4) differs from
the others only in (a) its time grid, (b) its schedule `alpha~(t)` on that grid, (c) the
remasking probability `sigma` of each step and (d) a static step rule: confidence weighting
(conf) or rank selection (topk). A strategy computes (a)-(c) on the host in float64
(`remdm_jax.sampling.steps` turns them into the table the scan reads); its fields are its
options, each validated on construction, so an option a strategy does not have cannot be
given to it.

Adding a strategy is one class here: subclass `Strategy`, give it a `name`, override what
differs, and decorate it with `@register`.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import numpy as np

from remdm_jax import schedules
from remdm_jax.diffusion import base_sigma
from remdm_jax.registry import Registry
from remdm_jax.validation import check_choice, check_fields, check_range, option

REGISTRY = Registry("strategy", "cap")
STRATEGIES = REGISTRY.classes      # name -> strategy class
register = REGISTRY.register       # the class decorator
CONF_SCORES = ("prob", "logprob")


def safe_div(num: np.ndarray, den: np.ndarray, at_zero: float) -> np.ndarray:
  """`num / den`, with `at_zero` where `den == 0`."""
  out = np.full_like(num, at_zero)
  np.divide(num, den, out=out, where=den != 0)
  return out


def _check_phases(t_on: float, t_off: float) -> None:
  if not 0.0 < t_off < t_on <= 1.0:
    raise ValueError(f"need 0 < t_off < t_on <= 1, got t_off={t_off}, t_on={t_on}")


def loop_phase(t_on: float, t_off: float, t: np.ndarray, s: np.ndarray) -> np.ndarray:
  """Phase (1, 2 or 3) of each step from `t` to `s`; `[n] int`.

  Phase 2 holds the steps lying wholly in `[t_off, t_on]`, where `alpha~` is constant and
  `sigma_max = (1 - alpha_on) / alpha_on`; the step that crosses `t_off` is an MDLM step of
  phase 3, so every step is a valid posterior of the piecewise schedule.
  """
  return np.where(t > t_on, 1, np.where(s >= t_off, 2, 3))


@dataclasses.dataclass(frozen=True)
class Strategy:
  """MDLM's backward process; subclasses change the grid, the schedule, sigma or the rule.

  Class attributes:
    name: the registered name (`--sampler.strategy=NAME`).
    select: "bernoulli" (per-token coin flips, eq. 6) or "rank" (topk by confidence).
    uses_schedule: whether `SamplerConfig.schedule` shapes the table.
  """

  name: ClassVar[str] = ""
  select: ClassVar[str] = "bernoulli"
  uses_schedule: ClassVar[bool] = True

  def __post_init__(self):
    check_fields(self)

  @property
  def conf_score(self) -> str | None:
    """None, or "prob" / "logprob": the confidence weighting of sigma (paper section 4.1)."""
    return None

  @property
  def last_phase_start(self) -> float | None:
    """`t_off` where phases shape the grid (the grid must reach it), else None."""
    return None

  def grid(self, num_steps: int, t_min: float) -> np.ndarray:
    """Times `[n + 1]` float64 from 1 down to `t_min`; step i goes from `grid[i]` to
    `grid[i + 1]`."""
    return schedules.uniform_grid(num_steps, t_min)

  def alpha(self, schedule, t: np.ndarray) -> np.ndarray:
    """`alpha~(t)` float64 on the grid."""
    return schedule.alpha(t)

  def sigma(self, t, s, alpha_t, alpha_s, smax) -> np.ndarray:
    """Remasking probability of each step `[n]` float64 (before conf weighting)."""
    return np.zeros_like(t)

  def rank_counts(self, t: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For rank selection: decoded fraction after each step `[n]` and tokens remasked per
    step `[n] int32`; decoding is spread evenly over the steps, nothing is remasked."""
    steps = np.arange(1, t.shape[0] + 1)
    return steps / t.shape[0], np.zeros(t.shape, np.int32)


@register
@dataclasses.dataclass(frozen=True)
class Mdlm(Strategy):
  """MDLM ancestral sampling: an unmasked token never changes (sigma = 0)."""

  name: ClassVar[str] = "mdlm"


@register
@dataclasses.dataclass(frozen=True)
class Cap(Strategy):
  """ReMDM-cap: `sigma = min(eta, sigma_max)`."""

  name: ClassVar[str] = "cap"
  eta: float = option(0.008, "eta_cap; 0.008 is the paper's best for T >= L (Table 6)")

  def __post_init__(self):
    super().__post_init__()
    check_range("eta", self.eta, 0.0, context=" for strategy 'cap'")

  def sigma(self, t, s, alpha_t, alpha_s, smax):
    return base_sigma("cap", self.eta, smax)


@register
@dataclasses.dataclass(frozen=True)
class Rescale(Strategy):
  """ReMDM-rescale: `sigma = eta * sigma_max`."""

  name: ClassVar[str] = "rescale"
  eta: float = option(0.015, "eta_rescale in [0, 1]; 0.015 is the paper's best for T >= L")

  def __post_init__(self):
    super().__post_init__()
    check_range("eta", self.eta, 0.0, 1.0, context=" for strategy 'rescale'")

  def sigma(self, t, s, alpha_t, alpha_s, smax):
    return base_sigma("rescale", self.eta, smax)


def _check_base_eta(strategy: str, base: str, eta: float) -> None:
  """eta of a cap / rescale base; a max base has none."""
  if base == "max" and eta != 0.0:
    raise ValueError(f"eta does not apply to strategy {strategy!r} with base 'max' (sigma = "
                     f"sigma_max); choose base cap or rescale, got eta={eta}")
  check_range("eta", eta, 0.0, 1.0 if base == "rescale" else None,
              context=f" for strategy {strategy!r} with base {base!r}")


@register
@dataclasses.dataclass(frozen=True)
class Conf(Strategy):
  """ReMDM-conf: the base sigma times a softmax over decoded positions of their confidence."""

  name: ClassVar[str] = "conf"
  base: str = option("max", "base sigma: max (sigma_max, the reference), cap or rescale")
  eta: float = option(0.0, "eta of a cap or rescale base (none for max)")
  score: str = option("prob", "weights softmax(-psi) (paper) or softmax(-log psi)")

  def __post_init__(self):
    super().__post_init__()
    check_choice("base", self.base, ("max", "cap", "rescale"))
    check_choice("score", self.score, CONF_SCORES)
    _check_base_eta(self.name, self.base, self.eta)

  @property
  def conf_score(self):
    return self.score

  def sigma(self, t, s, alpha_t, alpha_s, smax):
    return base_sigma(self.base, self.eta, smax)


@register
@dataclasses.dataclass(frozen=True)
class Loop(Strategy):
  """ReMDM-loop (paper section 4.2): remasking at a constant alpha between t_on and t_off.

  MDLM down to `alpha_on` at `t_on`, remasking at constant alpha until `t_off`, then MDLM
  again. Its piecewise alpha replaces the schedule."""

  name: ClassVar[str] = "loop"
  uses_schedule: ClassVar[bool] = False
  eta: float = option(0.02, "phase-2 sigma (base constant), or eta of a cap / rescale base")
  t_on: float = option(0.55, "phase 2 starts when t <= t_on")
  t_off: float = option(0.05, "phase 2 ends when t <= t_off")
  alpha_on: float = option(0.9, "alpha held in phase 2")
  base: str = option("constant", "phase-2 sigma rule: constant (reference), cap or rescale")
  conf: str = option("none", "none, or prob / logprob: weight phase-2 sigma by confidence")

  def __post_init__(self):
    super().__post_init__()
    check_choice("base", self.base, ("constant", "cap", "rescale"))
    check_choice("conf", self.conf, ("none",) + CONF_SCORES)
    _check_phases(self.t_on, self.t_off)
    check_range("alpha_on", self.alpha_on, 0.0, 1.0, low_open=True, high_open=True)
    limit = (1.0 - self.alpha_on) / self.alpha_on
    if self.base == "constant" and not 0.0 <= self.eta <= limit:
      raise ValueError(
          f"eta must be in [0, (1 - alpha_on) / alpha_on] = [0, {limit:.4g}] for strategy "
          f"'loop' with alpha_on={self.alpha_on}, got {self.eta}")
    _check_base_eta(self.name, self.base, self.eta)

  @property
  def conf_score(self):
    return None if self.conf == "none" else self.conf

  @property
  def last_phase_start(self):
    return self.t_off

  def alpha(self, schedule, t):
    phase1 = self.alpha_on * (1.0 - t) / (1.0 - self.t_on)
    phase3 = 1.0 - (1.0 - self.alpha_on) * t / self.t_off
    return np.where(t > self.t_on, phase1, np.where(t > self.t_off, self.alpha_on, phase3))

  def sigma(self, t, s, alpha_t, alpha_s, smax):
    in_phase2 = loop_phase(self.t_on, self.t_off, t, s) == 2
    return np.where(in_phase2, base_sigma(self.base, self.eta, smax), 0.0)


@register
@dataclasses.dataclass(frozen=True)
class Fb(Strategy):
  """Forward-backward corrector (Campbell et al. 2022).

  `sigma = (alpha_s - alpha_t) / alpha_t`, clipped to sigma_max."""

  name: ClassVar[str] = "fb"

  def sigma(self, t, s, alpha_t, alpha_s, smax):
    return np.minimum(safe_div(alpha_s - alpha_t, alpha_t, at_zero=np.inf), smax)


@register
@dataclasses.dataclass(frozen=True)
class Dfm(Strategy):
  """Discrete flow matching corrector (Gat et al. 2024) on its adaptive grid.

  `sigma = beta_t (alpha_s - alpha_t) / alpha_t`, clipped to sigma_max, with
  `beta_t = beta_scale * t^beta_power * (1 - t)^beta_power`. The grid is derived for
  `alpha = 1 - t`, so the schedule is fixed to loglinear."""

  name: ClassVar[str] = "dfm"
  uses_schedule: ClassVar[bool] = False
  beta_scale: float = option(10.0, "corrector strength (as in the ReMDM reference)")
  beta_power: float = option(0.25, "exponent of t and 1 - t in beta_t")

  def __post_init__(self):
    super().__post_init__()
    check_range("beta_scale", self.beta_scale, 0.0)
    check_range("beta_power", self.beta_power, 0.0, low_open=True)

  def beta(self, t: np.ndarray) -> np.ndarray:
    """Corrector strength `beta_t`, float64."""
    return self.beta_scale * t ** self.beta_power * (1.0 - t) ** self.beta_power

  def grid(self, num_steps, t_min):
    """`dt = min(1 / T, 1 / (a_t / t + b_t / (1 - t)))`, `a = 1 + beta`, `b = beta`, so that
    the total jump rate times `dt` stays <= 1. At `t = 1` nothing is decoded yet and the
    remask rate is moot, so the first step is `1 / T`. The grid stops at `t_min`."""
    ts = [1.0]
    while ts[-1] > t_min:
      t = ts[-1]
      beta = self.beta(np.float64(t))
      rate = (1.0 + beta) / t + (beta / (1.0 - t) if t < 1.0 else 0.0)
      ts.append(max(t - min(1.0 / num_steps, 1.0 / rate), t_min))
    return np.asarray(ts, dtype=np.float64)

  def alpha(self, schedule, t):
    return 1.0 - t

  def sigma(self, t, s, alpha_t, alpha_s, smax):
    return np.minimum(safe_div(self.beta(t) * (alpha_s - alpha_t), alpha_t, at_zero=np.inf),
                      smax)


@register
@dataclasses.dataclass(frozen=True)
class Topk(Strategy):
  """Confidence decoding: unmask the most confident masked positions, a fixed count per step.

  With `remask > 0` the steps in `[t_off, t_on]` hold the decoded count and remask (then
  re-unmask) the `remask` least confident tokens each (the LLaDA ReMDM variant)."""

  name: ClassVar[str] = "topk"
  select: ClassVar[str] = "rank"
  remask: int = option(0, "tokens remasked (and re-unmasked) per step of [t_off, t_on]")
  t_on: float = option(0.55, "with remask > 0: the remasking steps start when t <= t_on")
  t_off: float = option(0.05, "... and end when t <= t_off")

  def __post_init__(self):
    super().__post_init__()
    check_range("remask", self.remask, 0)
    if self.remask == 0 and (self.t_on, self.t_off) != (0.55, 0.05):
      raise ValueError(f"t_on and t_off apply to strategy 'topk' only with remask > 0, got "
                       f"t_on={self.t_on}, t_off={self.t_off}")
    _check_phases(self.t_on, self.t_off)

  @property
  def last_phase_start(self):
    return self.t_off if self.remask else None

  def rank_counts(self, t, s):
    if not self.remask:
      return super().rank_counts(t, s)
    in_loop = loop_phase(self.t_on, self.t_off, t, s) == 2
    normal = np.cumsum(~in_loop)
    decoded_frac = normal / max(int(normal[-1]), 1)
    return decoded_frac, np.where(in_loop, self.remask, 0).astype(np.int32)
