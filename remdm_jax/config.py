"""`SamplerConfig`: every sampler option, its default and its valid range, in one place.

The config is a frozen, hashable dataclass, so it can be a static argument of `jax.jit`.
`strategies.build_plan` turns it into arrays; nothing inside jitted code reads strings.
"""

from __future__ import annotations

import dataclasses

from remdm_jax.validation import check_choice, check_fields, check_range

STRATEGY_NAMES = ("mdlm", "cap", "rescale", "conf", "loop", "fb", "dfm", "topk")
TOP_P_MODES = ("reference", "standard")
TOP_P_IMPLS = ("sort", "bisect")
LOOP_BASES = ("constant", "cap", "rescale", "conf")
CONF_BASES = ("max", "cap", "rescale")
CONF_SCORES = ("prob", "logprob")
LOGITS_DTYPES = ("float32", "bfloat16")


@dataclasses.dataclass(frozen=True)
class SamplerConfig:
  """Options of `remdm_jax.sample`.

  `eta` is the one strength knob, read by the strategy: `eta_cap` for cap, `eta_rescale` for
  rescale, the phase-2 sigma for loop, and the base sigma of conf when `conf_base` is cap or
  rescale. Defaults follow the ReMDM reference code (Wang et al. 2025, arXiv 2503.00307).
  """

  strategy: str = "mdlm"        # one of STRATEGY_NAMES
  num_steps: int = 128          # T, number of denoiser calls before the final noise removal
  eta: float = 0.0              # remasking strength (meaning depends on the strategy, above)
  t_on: float = 0.55            # loop / topk-remask: phase 2 starts when t <= t_on (paper 4.2)
  t_off: float = 0.05           # loop / topk-remask: phase 2 ends when t <= t_off
  alpha_on: float = 0.9         # loop: alpha held in phase 2
  top_p: float = 1.0            # nucleus mass in (0, 1]; 1 disables it
  top_p_mode: str = "reference" # reference: cumsum <= p plus top token; standard: mass >= p
  top_p_impl: str = "bisect"    # bisect: threshold by bit bisection (fast); sort: full sort
  temperature: float = 1.0      # logits are divided by it before the softmax
  schedule: str = "loglinear"   # alpha(t) used on the grid; loglinear is alpha = 1 - t
  t_min: float = 1e-5           # last time of the grid, as in the reference sampler
  loop_base: str = "constant"   # loop phase-2 sigma: constant eta (reference) or a strategy
  conf_base: str = "max"        # conf base sigma: sigma_max (reference), cap or rescale
  conf_score: str = "prob"      # conf weights softmax(-psi) (paper) or softmax(-log psi)
  dfm_beta_scale: float = 10.0  # dfm corrector beta_t = scale * t^power * (1 - t)^power
  dfm_beta_power: float = 0.25  # (Gat et al. 2024, as in the ReMDM reference)
  topk_remask: int = 0          # topk: tokens remasked (and re-unmasked) per loop-phase step
  cache: bool = False           # reuse x_theta when nothing changed; only if denoiser ignores t
  logits_dtype: str = "float32" # the denoiser's logits (and the cache) are held in this dtype
  position_chunk: int = 0       # >0: x_theta, top-p and draws for this many positions at a
                                # time (less memory; per-position keys, same for any chunk)

  def __post_init__(self):
    check_fields(self)
    check_choice("strategy", self.strategy, STRATEGY_NAMES)
    check_choice("top_p_mode", self.top_p_mode, TOP_P_MODES)
    check_choice("top_p_impl", self.top_p_impl, TOP_P_IMPLS)
    check_choice("loop_base", self.loop_base, LOOP_BASES)
    check_choice("conf_base", self.conf_base, CONF_BASES)
    check_choice("conf_score", self.conf_score, CONF_SCORES)
    check_choice("logits_dtype", self.logits_dtype, LOGITS_DTYPES)
    check_range("num_steps", self.num_steps, 1)
    check_range("top_p", self.top_p, 0.0, 1.0, low_open=True)
    check_range("temperature", self.temperature, 0.0, low_open=True)
    check_range("t_min", self.t_min, 0.0, 1.0, high_open=True)
    check_range("eta", self.eta, 0.0)
    check_range("position_chunk", self.position_chunk, 0)
    check_range("topk_remask", self.topk_remask, 0)
    if self.uses_loop_phases and not self.t_min <= self.t_off < self.t_on <= 1.0:
      raise ValueError(
          f"need t_min <= t_off < t_on <= 1, got t_off={self.t_off}, t_on={self.t_on} "
          f"(t_min={self.t_min})")
    if self.strategy == "loop":
      check_range("alpha_on", self.alpha_on, 0.0, 1.0, low_open=True, high_open=True)
    check_range("dfm_beta_scale", self.dfm_beta_scale, 0.0)
    check_range("dfm_beta_power", self.dfm_beta_power, 0.0, low_open=True)
    self._check_eta()

  def _check_eta(self):
    base = self.sigma_base
    if base == "rescale" and self.eta > 1.0:
      raise ValueError(
          f"eta must be in [0, 1] for rescale (eta * sigma_max) with strategy "
          f"{self.strategy!r}, got {self.eta}")
    if self.strategy == "loop" and base == "constant":
      limit = (1.0 - self.alpha_on) / self.alpha_on
      if self.eta > limit:
        raise ValueError(
            f"eta must be in [0, (1 - alpha_on) / alpha_on] = [0, {limit:.4g}] for strategy "
            f"'loop' with alpha_on={self.alpha_on}, got {self.eta}")

  @property
  def uses_loop_phases(self) -> bool:
    """Whether the t_on / t_off phases shape the schedule."""
    return self.strategy == "loop" or (self.strategy == "topk" and self.topk_remask > 0)

  @property
  def uses_conf(self) -> bool:
    """Whether remasking is weighted per token by confidence (paper section 4.1)."""
    return self.strategy == "conf" or (self.strategy == "loop" and self.loop_base == "conf")

  @property
  def sigma_base(self) -> str:
    """The sigma rule of the remasking steps: constant, cap, rescale, max (or a strategy's own)."""
    if self.strategy == "loop":
      return self.conf_base if self.loop_base == "conf" else self.loop_base
    if self.strategy == "conf":
      return self.conf_base
    return self.strategy
