"""`SamplerConfig`: the options every diffusion strategy shares, plus the strategy object.

`BlockConfig`: semi-autoregressive block decoding's own config (strategy "llada"). Block
decoding is a decoder of its own (`remdm_jax.sampling.blocks`), with its own options and
defaults, so it has a config of its own rather than the diffusion strategies' shared options
(top-p, schedules, `t_min`, caches of logits, which it would not read). It is registered under
the strategy name "llada", so `sampler_config("llada", block_length=32, ...)` and
`remdm-sample --sampler.strategy=llada --sampler.block_length=32` build it;
`sampler_config` and `with_options` move between the two configs by name.

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

import numpy as np

from remdm_jax import schedules
from remdm_jax.diffusion import base_sigma, sigma_max
from remdm_jax.sampling import blocks, steps, strategies
from remdm_jax.registry import flat_options, option_names, with_choice_options
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
    strategy = options.get("strategy")
    if isinstance(strategy, BlockConfig):
      return strategy.with_options(**{k: v for k, v in options.items() if k != "strategy"})
    if strategy == BlockConfig.name:
      return BlockConfig().with_options(**options)
    return with_choice_options(self, options)


def _by_select(select: str) -> list[str]:
  """The strategies whose `select` is the given one."""
  return sorted(name for name, cls in STRATEGIES.items() if cls.select == select)


_DEFAULTS = {f.name: f.default for f in dataclasses.fields(SamplerConfig)}


REMASKING = ("low_confidence", "random")
KV_CACHES = ("none", "prefix", "dual")
REMDM_SELECTS = ("confidence", "random")
BLOCK_SIGMAS = ("none", "cap", "rescale", "conf")
_REMDM_OPTIONS = ("remdm_start", "remdm_steps", "remdm_decode", "remdm_select")


@strategies.register
@dataclasses.dataclass(frozen=True)
class BlockConfig:
  """Block decoding: LLaDA's semi-autoregressive decoder, ReMDM-LLaDA and Fast-dLLM.

  The masked tail after each prompt is cut into blocks of `block_length`, decoded left to
  right with `num_steps` steps each (LLaDA, Nie et al. 2025); a step unmasks the most
  confident (`low_confidence`) or random masked positions of the block, `masked // num_steps`
  of them plus one in the first `masked % num_steps` steps.

  Options beyond LLaDA's own:
    remdm_number > 0 (ReMDM-LLaDA, Wang et al. 2025, rebuttal): after `remdm_start` of a
      block's steps (default `block_length * 7 // 8`, as ReMDM-LLaDA), `remdm_steps` extra
      steps (default `num_steps`, as ReMDM-LLaDA) each remask the `remdm_number` decoded
      tokens of the block decoded with the lowest confidence (or random ones,
      `remdm_select="random"`) and then decode `remdm_decode` positions.
    threshold > 0 (Fast-dLLM, Wu et al. 2025): a step also unmasks every masked position of
      the block whose confidence is at least `threshold` (at least the step's count; one
      token per step, the default `num_steps`, gives Fast-dLLM's "at least one").
    kv_cache: "prefix" computes the keys and values of the prompt and finished blocks once
      per block, "dual" those of every position outside the block (Fast-dLLM's caches;
      approximations). Needs a denoiser with the cache contract (LLaDA models have it).
    cfg_scale > 0: classifier-free guidance with the prompt masked for the unconditional
      logits, `un + (cfg_scale + 1) * (cond - un)` (LLaDA's `generate`).
    remask_sigma "cap" / "rescale" / "conf" (the paper's ReMDM strategies inside a block):
      regular step `r` of `S` is the MDLM step from `t = 1 - r/S` to `s = t - 1/S` of LLaDA's
      linear schedule (`alpha = 1 - t`); each token decoded in the block is remasked with
      probability `min(eta, sigma_max)`, `eta * sigma_max` or `sigma_max * softmax(-psi)`
      over the block's decoded tokens (`psi`: the probability each was decoded with), and
      the step decodes its count plus what it remasked.
    eos_id >= 0: an example whose answer holds `eos_id` after a block stops: its later
      positions become `eos_id` and it takes no more steps.

  LLaDA's `generate(steps=S_total, gen_length=G, block_length=K)` is `num_steps = S_total * K
  / G` with `seq_len = P + G`.
  """

  CHOICE: ClassVar = ("strategy", strategies.REGISTRY)   # its name in the flat form
  OWN_CONFIG: ClassVar[bool] = True   # a strategy name, but SamplerConfig's options do not apply
  name: ClassVar[str] = "llada"
  select: ClassVar[str] = "block"

  block_length: int = option(32, "K: positions per block, from each prompt's end")
  num_steps: int | None = option(None, "regular steps per block (None: block_length, one "
                                       "token per step)")
  temperature: float = option(0.0, "0: argmax (LLaDA's default); > 0: x0 drawn from "
                                   "softmax(logits / temperature)")
  remasking: str = option("low_confidence", "which masked positions a step unmasks: most "
                                            "confident (softmax probability of the chosen id) "
                                            "or random")
  threshold: float = option(0.0, "> 0: also unmask every position this confident")
  kv_cache: str = option("none", "none | prefix | dual")
  cfg_scale: float = option(0.0, "classifier-free guidance scale (0: off)")
  remdm_number: int = option(0, "ReMDM-LLaDA: tokens remasked per remasking step (0: off)")
  remdm_start: int = option(-1, "regular steps before the remasking steps (-1: K * 7 // 8)")
  remdm_steps: int = option(-1, "remasking steps per block (-1: num_steps)")
  remdm_decode: int = option(-1, "positions decoded per remasking step (-1: remdm_number)")
  remdm_select: str = option("confidence", "which decoded tokens are remasked: least confident "
                                           "or random (the rebuttal's baseline)")
  remask_sigma: str = option("none", "cap | rescale | conf: ReMDM remasking on regular steps")
  eta: float = option(0.0, "eta of cap (> 0) or rescale (in (0, 1])")
  eos_id: int = option(-1, ">= 0: stop an example after a block holding this id")

  def __post_init__(self):
    check_fields(self)
    context = " for strategy 'llada'"
    check_range("block_length", self.block_length, 1, context=context)
    if self.num_steps is not None:
      check_range("num_steps", self.num_steps, 1, context=context)
    check_range("temperature", self.temperature, 0.0, context=context)
    check_choice("remasking", self.remasking, REMASKING)
    check_range("threshold", self.threshold, 0.0, 1.0, context=context)
    check_choice("kv_cache", self.kv_cache, KV_CACHES)
    check_range("cfg_scale", self.cfg_scale, 0.0, context=context)
    check_range("remdm_number", self.remdm_number, 0, context=context)
    check_choice("remdm_select", self.remdm_select, REMDM_SELECTS)
    check_range("eos_id", self.eos_id, -1, context=context)
    for name in ("remdm_start", "remdm_steps", "remdm_decode"):
      check_range(name, getattr(self, name), -1, context=context)
    self._check_remdm()
    self._check_remask_sigma()
    self.window()

  @property
  def steps_per_block(self) -> int:
    """S, the regular steps of a block: `num_steps`, or `block_length` when it is None."""
    return self.block_length if self.num_steps is None else self.num_steps

  def _check_remdm(self) -> None:
    """ReMDM-LLaDA options need `remdm_number > 0`; options that could not act are refused: a
    step cannot remask or decode more positions than a block holds, and zero remasking steps
    never remask."""
    given = {f: getattr(self, f) for f in _REMDM_OPTIONS if getattr(self, f) != _BLOCK_DEFAULTS[f]}
    if not self.remdm_number:
      if given:
        raise ValueError(f"{', '.join(f'{k}={v!r}' for k, v in given.items())} apply only "
                         "with remdm_number > 0 (the ReMDM-LLaDA remasking steps); set "
                         "remdm_number or leave them out")
      return
    for name in ("remdm_number", "remdm_decode"):
      value = getattr(self, name)
      if value > self.block_length:
        raise ValueError(f"{name} must be in [0, block_length] = [0, {self.block_length}] "
                         f"for strategy 'llada' (a block holds block_length positions), got "
                         f"{value}")
    if self.remdm_steps == 0:
      raise ValueError(f"remdm_steps must be in [1, inf) (or -1: num_steps) with remdm_number"
                       f"={self.remdm_number} > 0 (no remasking step would remask), got 0")

  def _check_remask_sigma(self) -> None:
    check_choice("remask_sigma", self.remask_sigma, BLOCK_SIGMAS)
    if self.remask_sigma != "none" and self.remdm_number:
      raise ValueError(f"remask_sigma={self.remask_sigma!r} and remdm_number="
                       f"{self.remdm_number} are two remasking rules; choose one")
    if self.remask_sigma in ("cap", "rescale"):
      check_range("eta", self.eta, 0.0, 1.0 if self.remask_sigma == "rescale" else None,
                  low_open=True, context=f" for remask_sigma {self.remask_sigma!r}")
    elif self.eta != 0.0:
      raise ValueError(f"eta applies only with remask_sigma 'cap' or 'rescale', got "
                       f"eta={self.eta} with remask_sigma={self.remask_sigma!r}")

  def block_sigma(self) -> np.ndarray:
    """Remasking probability of each regular step of a block, `[S]` float64, on the linear
    schedule from `t = 1 - r/S` to `s = t - 1/S` (0 without `remask_sigma`)."""
    steps = self.steps_per_block
    r = np.arange(steps, dtype=np.float64)
    if self.remask_sigma == "none":
      return np.zeros(steps)
    rule = "max" if self.remask_sigma == "conf" else self.remask_sigma
    return base_sigma(rule, self.eta, sigma_max(r / steps, (r + 1) / steps))

  def window(self) -> tuple[int, int, int]:
    """`(start, steps, decode)` of the remasking steps (all 0 without ReMDM-LLaDA):
    ReMDM-LLaDA's window by default, `block_length * 7 // 8` regular steps, then `S`
    remasking steps each decoding `remdm_number` positions.

    Raises:
      ValueError: `remdm_start` beyond the block's `S` regular steps.
    """
    if not self.remdm_number:
      return 0, 0, 0
    steps = self.steps_per_block
    start = self.block_length * 7 // 8 if self.remdm_start < 0 else self.remdm_start
    if start > steps:
      raise ValueError(f"remdm_start must be in [0, num_steps] = [0, {steps}] (the remasking "
                       f"steps start after that many of a block's steps), got {start}"
                       + (" (the default block_length * 7 // 8; set remdm_start)"
                          if self.remdm_start < 0 else ""))
    return (start, steps if self.remdm_steps < 0 else self.remdm_steps,
            self.remdm_number if self.remdm_decode < 0 else self.remdm_decode)

  def build_plan(self) -> tuple[blocks.BlockPlan, blocks.BlockRule]:
    """The plan (`remdm_jax.sampling.blocks.BlockPlan`) and its rule, the block decoder."""
    return blocks.build_block_plan(self)

  def options(self) -> dict:
    """The flat form `{"strategy": "llada", **fields}` (JSON-able)."""
    return flat_options(self)

  def with_options(self, **options):
    """A copy with flat options changed; another `strategy` name returns that strategy's
    `SamplerConfig`, from its defaults (block decoding's options do not carry over).

    Raises:
      ValueError: an unknown option (listing block decoding's), or a value it refuses.
    """
    strategy = options.get("strategy", self.name)
    if not isinstance(strategy, BlockConfig) and strategy != self.name:   # a name or a Strategy
      return SamplerConfig().with_options(**options)
    shared = [f"{key}={value!r}" for key, value in options.items()
              if key in option_names(SamplerConfig) and key not in _BLOCK_DEFAULTS
              and key != "strategy"]
    if shared:
      verb, pronoun = ("do", "them") if len(shared) > 1 else ("does", "it")
      raise ValueError(f"{', '.join(shared)} {verb} not apply to block decoding (strategy "
                       "'llada', a BlockConfig of its own, does not read the diffusion "
                       f"strategies' options); leave {pronoun} out (its options: "
                       f"{list(_BLOCK_DEFAULTS)})")
    return with_choice_options(self, options)


_BLOCK_DEFAULTS = {f.name: f.default for f in dataclasses.fields(BlockConfig)}


def sampler_config(strategy="mdlm", **options) -> SamplerConfig | BlockConfig:
  """A config from flat keywords, e.g. `sampler_config("cap", eta=0.01, num_steps=64)` is
  `SamplerConfig(strategy=Cap(eta=0.01), num_steps=64)`, and `sampler_config("llada",
  block_length=32, kv_cache="dual")` is `BlockConfig(block_length=32, kv_cache="dual")`.

  Raises:
    ValueError: an unknown strategy or option, or one the strategy does not have.
  """
  return SamplerConfig().with_options(strategy=strategy, **options)
