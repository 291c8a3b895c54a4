"""`SamplerConfig`: the options every diffusion strategy shares, plus the strategy object.

Block decoding has a config of its own (`remdm_jax.sampling.block_config.BlockConfig`,
strategy "llada"); `sampler_config` and `with_options` move between the two by name.

The config is a frozen, hashable dataclass, so it can be a static argument of `jax.jit`.
`remdm_jax.sampling.plan.build_plan` turns it into arrays; nothing inside jitted code reads strings.

A strategy's own options live on its class (`remdm_jax.sampling.strategies`): `Cap(eta=0.01)`,
`Loop(eta=0.02, t_on=0.55)`. The flat keyword form used by command lines and sweeps,
`sampler_config(strategy="cap", eta=0.01, num_steps=64)`, routes each option to the strategy or
the shared config and rejects an option the strategy does not have.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from remdm_jax import schedules
from remdm_jax.sampling import steps, strategies
from remdm_jax.sampling.block_config import BlockConfig
from remdm_jax.registry import flat_options, with_choice_options
from remdm_jax.sampling.strategies import STRATEGIES, Mdlm, Strategy
from remdm_jax.sampling.topp import DEFAULT_IMPL, TOP_P_IMPLS, TOP_P_MODES
from remdm_jax.validation import (ArgumentTypeError, check_choice, check_fields, check_range,
                                  option)

LOGITS_DTYPES = ("auto", "float32", "bfloat16")


@dataclasses.dataclass(frozen=True)
class SamplerConfig:
  """Options of `remdm_jax.sample` shared by every strategy.

  Defaults follow the ReMDM reference code (Wang et al. 2025, arXiv 2503.00307).
  """

  CHOICE: ClassVar = ("strategy", strategies.REGISTRY)   # --sampler.strategy picks it

  strategy: Strategy = option(Mdlm(), "a strategy object: Mdlm(), Cap(eta), Loop(...), ...")
  num_steps: int = option(128, "T, number of denoiser calls before the final noise removal")
  top_p: float = option(1.0, "nucleus mass in (0, 1]; 1 disables it")
  top_p_mode: str = option("reference", "reference: cumsum <= p plus top token; standard: mass "
                                        ">= p")
  top_p_impl: str = option(DEFAULT_IMPL, "bisect: 31 masked sums; radix: 4 histogram passes; "
                                         "sort")
  temperature: float = option(1.0, "logits are divided by it before the softmax")
  schedule: str = option("loglinear", "alpha(t) on the grid (loglinear is alpha = 1 - t); loop "
                                      "and dfm fix their own")
  t_min: float = option(1e-5, "last time of the grid, as in the reference sampler")
  cache: bool = option(False, "reuse x_theta when nothing changed; only if denoiser ignores t")
  logits_dtype: str = option("auto", "the denoiser's logits (and the cache) are held in this "
                                     "dtype; auto: as the denoiser emits them (bf16 from a "
                                     "bf16 model)")
  position_chunk: int = option(0, "topk (draws at every position): x_theta, top-p and draws "
                                  "for this many positions at a time (less memory, same "
                                  "tokens)")
  draw_capacity: int = option(0, "other strategies: positions drawn per example per round; 0 "
                                 "sizes it from the schedule (same tokens for any value)")

  def __post_init__(self):
    check_fields(self)
    if not isinstance(self.strategy, Strategy):
      raise ArgumentTypeError(
          f"strategy must be a strategy object such as remdm_jax.Cap(eta=0.01) (or use "
          f"sampler_config(strategy='cap', ...); block decoding is a BlockConfig of its own), "
          f"got {self.strategy!r}")
    check_choice("top_p_mode", self.top_p_mode, TOP_P_MODES)
    check_choice("top_p_impl", self.top_p_impl, TOP_P_IMPLS)
    check_choice("logits_dtype", self.logits_dtype, LOGITS_DTYPES)
    check_choice("schedule", self.schedule, tuple(schedules.SCHEDULES))
    check_range("num_steps", self.num_steps, 1)
    check_range("top_p", self.top_p, 0.0, 1.0, low_open=True)
    check_range("temperature", self.temperature, 0.0, low_open=True)
    check_range("t_min", self.t_min, 0.0, 1.0, high_open=True)
    check_range("position_chunk", self.position_chunk, 0)
    check_range("draw_capacity", self.draw_capacity, 0)
    top_p_options = [f"{f}={getattr(self, f)!r}" for f in ("top_p_mode", "top_p_impl")
                     if getattr(self, f) != _DEFAULTS[f]]
    if self.top_p == 1.0 and top_p_options:
      verb = "apply" if len(top_p_options) > 1 else "applies"
      raise ValueError(f"{', '.join(top_p_options)} {verb} only with top_p < 1 (top_p=1 "
                       "disables the filter); set top_p or leave them out")
    name = self.strategy.name
    if self.schedule != "loglinear" and not self.strategy.uses_schedule:
      raise ValueError(f"schedule does not apply to strategy {name!r} (it fixes its own "
                       f"alpha), got schedule={self.schedule!r}")
    if self.position_chunk and self.strategy.select != "rank":
      raise ValueError(f"position_chunk applies to strategies that draw at every position "
                       f"({_by_select('rank')}), not to {name!r}; got "
                       f"position_chunk={self.position_chunk}")
    if self.draw_capacity and self.strategy.select != "bernoulli":
      raise ValueError(f"draw_capacity applies to strategies that draw only where they "
                       f"unmask ({_by_select('bernoulli')}), not to {name!r}; got "
                       f"draw_capacity={self.draw_capacity}")
    t_off = self.strategy.last_phase_start
    if t_off is not None and t_off < self.t_min:
      raise ValueError(f"need t_min <= t_off for strategy {name!r}, got t_off={t_off}, "
                       f"t_min={self.t_min}")

  @classmethod
  def paper_loop(cls, num_steps: int = 256) -> SamplerConfig:
    """ReMDM-loop with the paper's OpenWebText settings (t_on 0.55, t_off 0.05, alpha_on
    0.9, eta 0.02) and top-p 0.9, the default of `remdm-sample`."""
    return cls().with_options(strategy="loop", num_steps=num_steps, eta=0.02, top_p=0.9)

  def options(self) -> dict:
    """The flat form: `{"strategy": name, **strategy fields, **shared fields}` (JSON-able;
    `sampler_config(**cfg.options())` rebuilds the config)."""
    return flat_options(self)

  def build_plan(self) -> tuple:
    """The plan (`remdm_jax.sampling.steps.Plan`) and its rule, the diffusion-step decoder."""
    return steps.build_steps_plan(self)

  def with_options(self, **options):
    """A copy with flat options changed. A new `strategy` name starts from that strategy's
    defaults (its options do not carry over); other names go to the strategy when it has
    them, else to the shared config (`remdm_jax.registry.with_choice_options`). The name
    "llada" returns a `BlockConfig` of the options given (block decoding reads none of the
    shared options).

    Raises:
      ValueError: an unknown option, or one the strategy does not have (naming both).
    """
    if options.get("strategy") == BlockConfig.name:
      return BlockConfig().with_options(**options)
    return with_choice_options(self, options)


def _by_select(select: str) -> list[str]:
  """The strategies whose `select` is the given one."""
  return sorted(name for name, cls in STRATEGIES.items() if cls.select == select)


_DEFAULTS = {f.name: f.default for f in dataclasses.fields(SamplerConfig)}


def sampler_config(strategy="mdlm", **options) -> SamplerConfig | BlockConfig:
  """A config from flat keywords, e.g. `sampler_config("cap", eta=0.01, num_steps=64)` is
  `SamplerConfig(strategy=Cap(eta=0.01), num_steps=64)`, and `sampler_config("llada",
  block_length=32, kv_cache="dual")` is `BlockConfig(block_length=32, kv_cache="dual")`.

  Raises:
    ValueError: an unknown strategy or option, or one the strategy does not have.
  """
  return SamplerConfig().with_options(strategy=strategy, **options)
