"""Particles: several samples per example, carried together through the compiled sampler.

`sample(..., particles=Smc(4))` decodes `P = 4` particles per example in the one `lax.scan` of
the plan's decoder (any `Decoder`: every diffusion strategy, block decoding with either
key-value cache, the re-predicting decoder), weighs them as they go, resamples them, and
returns one sequence per example, `[B, L] int32`. The particles of example `b` are rows
`b * P .. b * P + P - 1` of a `[B * P, L]` decode, so they shard like the batch; resampling
copies rows within an example, gathering every row-leading leaf of the decoder's carry (its
tokens, scores and key-value caches; `remdm_jax.sampling.decoder.Scan`).

Randomness stays per example: particle 0 of example `b` draws from the example's own key
(`fold_in(key, first_index + b)`), so one particle gives exactly the plain decoder's tokens;
particle `p > 0` from `fold_in(fold_in(that key, PARTICLE_STREAM), p)`; the resampling draw
after step `j` from `fold_in(fold_in(that key, RESAMPLE_STREAM), j)`. Tokens therefore do not
depend on the batch split, the device count or a restart.

Methods (frozen dataclasses: static, one compiled program per method):

- `BestOfN(num, reward=None)`: `num` independent decodes; the chosen one has the highest
  reward of its tokens, or without a reward the highest confidence (the mean, over the
  positions it decoded, of the model's log-probability of each token when it was last
  committed).
- `Smc(num, reward=None, ...)`: sequential Monte Carlo. Without a reward it is self-rewarding
  SMC (Luo et al. 2026; Algolzw/self-rewarding-smc): a step's incremental log-weight is the
  sum of the model's log-probabilities (SUBS, temperature 1) of the tokens it committed. With
  a reward `r` it is reward SMC (Ou et al. 2025, the "reverse" proposal of J-zin/smc_ddm_iclr):
  the potential of a particle is `r(x_hat) / beta`, `x_hat` the step's clean-sequence
  prediction (its tokens, and the argmax of the step's logits where still masked; block
  decoding predicts the current block only, later blocks stay masked), the incremental
  log-weight its change, and the last potential is that of the decoded tokens, so the
  weighted particles target `p(x) exp(r(x) / beta)` (a reward of -inf is a hard constraint;
  potentials are clipped to +-1e30 and NaN counts as -inf). An example resamples when its
  effective sample size falls below `ess_threshold * num` (always, for a threshold of 1), at
  the steps `every` names; its weights then restart at zero.
- `ParticleGibbs(num, iterations=k, ...)`: `k` passes of `Smc`, each after the first
  conditional on a line of ancestors drawn from the pass before (particle 0 replays it with
  its exact step keys and is never replaced).

Every result says what it cost (`ParticleResult.nfe`, model calls per example). The scan
itself (resampling, passes, the chosen particle's line of ancestors) is
`remdm_jax.sampling.particle_scan`.

References:
  Luo et al., "Self-Rewarding Sequential Monte Carlo for Masked Diffusion Language Models",
  arXiv 2602.01849 (Algolzw/self-rewarding-smc, `llada/generate_smc.py`).
  Ou et al., sequential Monte Carlo for discrete diffusion with rewards, arXiv 2505.22524
  (J-zin/smc_ddm_iclr).
  Dang et al., "Inference-time scaling of diffusion language models with particle Gibbs
  sampling", arXiv 2507.08390 (MhDang/pg-ddm).
"""

from __future__ import annotations

import abc
import dataclasses
from typing import Callable, ClassVar, NamedTuple

import jax
import jax.numpy as jnp

from remdm_jax.sampling.decoder import Needs, StepOut
from remdm_jax.validation import (ArgumentTypeError, check_choice, check_fields, check_int,
                                  check_range, option)

__all__ = ["BestOfN", "ParticleGibbs", "ParticleResult", "ParticleState", "Particles",
           "ParticlesConfig", "Smc", "effective_size", "resample"]

RESAMPLERS = ("multinomial", "systematic")
POTENTIAL_BOUND = 1e30   # potentials are clipped to +-this (a -inf reward: weight 0)


class ParticleResult(NamedTuple):
  """Every particle of a call (`sample(..., particles=..., return_particles=True)`)."""

  tokens: jax.Array        # [B, L] int32, the chosen particle of each example
  particles: jax.Array     # [B, P, L] int32, every particle's tokens
  log_weights: jax.Array   # [B, P] float32, log-weights since the last resampling
  scores: jax.Array        # [B, P] float32, what `select` ranked (reward, confidence, weight)
  chosen: jax.Array        # [B] int32, the chosen particle
  nfe: jax.Array           # [] int32, model calls per example (particles x calls)
  resamplings: jax.Array   # [B] int32, how often the example resampled (the last pass)
  nonfinite: jax.Array     # [B] bool, some particle's logits were not finite where drawn


class ParticleState(NamedTuple):
  """The particle layer's carry (rows `N = B * P`)."""

  log_w: jax.Array         # [N] float32, log-weights since the last resampling
  twist: jax.Array         # [N] float32, the last potential r(x_hat) / beta (reward SMC)
  base: jax.Array          # [N] float32, the potential at the last resampling
  logp: jax.Array          # [N, L] float32, log p of each position's token when committed
  decided: jax.Array       # [N, L] bool, the position holds a committed token
  calls: jax.Array         # [] int32, model calls so far
  resampled: jax.Array     # [N] int32, how often the row's example resampled


def confidence(state: ParticleState) -> jax.Array:
  """`[N]`: the mean log-probability of the committed tokens (0 where none is)."""
  count = jnp.sum(state.decided, axis=-1)
  return jnp.sum(state.logp, axis=-1) / jnp.maximum(count, 1)


def _check_reward(reward) -> None:
  if reward is not None and not callable(reward):
    raise ArgumentTypeError(f"reward must be a function tokens [N, L] int32 -> [N] float32 "
                            f"(jittable) or None, got {reward!r:.60}")


def check_reward(fn: Callable, rows: int, length: int) -> None:
  """Traces `fn` on `[rows, L] int32` tokens (abstractly) before any compilation.

  Raises:
    ValueError: (one line) it cannot be traced (NumPy or Python control flow on the token
      values), or it does not return one value per row.
  """
  problem = None
  try:
    out = jax.eval_shape(fn, jax.ShapeDtypeStruct((rows, length), jnp.int32))
  except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError,
          jax.errors.TracerBoolConversionError, jax.errors.TracerIntegerConversionError) as e:
    problem = (f"reward must be jittable (jax.numpy on the tokens, no NumPy or Python control "
               f"flow on their values): {type(e).__name__}")
  else:
    if getattr(out, "shape", None) != (rows,):
      problem = (f"reward must return one value per particle row, [B x P] = [{rows}], got "
                 f"shape {list(getattr(out, 'shape', ()))}")
  if problem:
    raise ValueError(problem)


def reward_values(fn: Callable, tokens: jax.Array) -> jax.Array:
  """`fn(tokens)` as `[N] float32`, NaN as -inf (checked beforehand by `check_reward`)."""
  value = jnp.asarray(fn(tokens)).astype(jnp.float32)
  return jnp.where(jnp.isnan(value), -jnp.inf, value)


@dataclasses.dataclass(frozen=True)
class Particles(abc.ABC):
  """A particle method: how particles are weighed, resampled and chosen (see the module
  docstring). Subclasses are frozen dataclasses (static under `jit`)."""

  num: int

  def __post_init__(self):
    check_int("num", self.num, 1)

  @property
  @abc.abstractmethod
  def select(self) -> str:
    """How the returned particle is chosen: "reward" (the highest reward of its tokens),
    "confidence" (the highest mean log-probability of its committed tokens) or "weight" (a
    draw in proportion to the final weights: the SMC estimate of its target)."""

  @property
  def reward_fn(self) -> Callable | None:
    return getattr(self, "reward", None)

  @property
  def passes(self) -> int:
    """Decodes of the `num` particles one call runs (particle Gibbs: its iterations)."""
    return 1

  @abc.abstractmethod
  def needs(self) -> Needs:
    """What the decoder's steps must report."""

  def weigh(self, out: StepOut, state: ParticleState) -> tuple[jax.Array, jax.Array]:
    """`(log-weights [N], twist [N])` after a step; unchanged by default."""
    return state.log_w, state.twist

  def resamples_at(self, out: StepOut, index: jax.Array) -> jax.Array | None:
    """`[] bool`: whether an example may resample after step `index`; None: the method never
    resamples (the default)."""
    return None

  def weigh_finish(self, tokens: jax.Array, logp, state: ParticleState) -> jax.Array:
    """The log-weights `[N]` after the decoder's finish; unchanged by default."""
    return state.log_w


@dataclasses.dataclass(frozen=True)
class BestOfN(Particles):
  """`num` independent decodes; the highest reward (or confidence) wins.

  Attributes:
    num: particles per example, >= 1.
    reward: None, or a jittable `tokens [N, L] int32 -> [N] float32` (higher is better).
  """

  reward: Callable | None = None

  def __post_init__(self):
    super().__post_init__()
    _check_reward(self.reward)

  @property
  def select(self) -> str:
    return "confidence" if self.reward is None else "reward"

  def needs(self) -> Needs:
    return Needs(logp=self.reward is None)


@dataclasses.dataclass(frozen=True)
class Smc(Particles):
  """Sequential Monte Carlo over the decoder's steps (see the module docstring).

  Attributes:
    num: particles per example, >= 1.
    reward: None (self-rewarding SMC), or a jittable `tokens [N, L] int32 -> [N] float32` of
      a clean-sequence estimate (masks where the decoder has not predicted yet); -inf marks
      a sequence the target excludes.
    beta: in (0, inf), the reward's temperature (the target is `p(x) exp(r(x) / beta)`).
    resampler: "multinomial" (the self-rewarding reference) or "systematic" (the reward
      reference).
    ess_threshold: in [0, 1]; an example resamples when its effective sample size
      `1 / sum(w^2)` is below `ess_threshold * num` (0: never; 1: at every allowed step).
      The size is at least 1, so with `num = 2` a threshold of 0.5 never resamples.
    every: resample only after every `every`-th step (>= 1); 0: at the decoder's own
      boundaries (the end of each block for block decoding, every step otherwise).
    choose: how the returned particle is chosen ("reward", "confidence" or "weight", see
      `Particles.select`); None: "reward" with a reward, else "confidence" (the references).
  """

  reward: Callable | None = None
  beta: float = 1.0
  resampler: str = "multinomial"
  ess_threshold: float = 0.5
  every: int = 0
  choose: str | None = None

  def __post_init__(self):
    super().__post_init__()
    _check_reward(self.reward)
    check_range("beta", self.beta, 0.0, float("inf"), low_open=True, high_open=True)
    check_range("ess_threshold", self.ess_threshold, 0.0, 1.0)
    check_int("every", self.every, 0)
    check_choice("resampler", self.resampler, RESAMPLERS)
    if self.choose not in (None, "reward", "confidence", "weight"):
      raise ValueError(f"choose must be None, 'reward', 'confidence' or 'weight', got "
                       f"{self.choose!r}")
    if self.choose == "reward" and self.reward is None:
      raise ValueError("choose='reward' needs a reward function (reward=...)")

  @property
  def select(self) -> str:
    return self.choose or ("confidence" if self.reward is None else "reward")

  def needs(self) -> Needs:
    return Needs(logp=self.reward is None or self.select == "confidence",
                 predicted=self.reward is not None)

  def _potential(self, tokens: jax.Array) -> jax.Array:
    """`r(tokens) / beta`, clipped to +-POTENTIAL_BOUND (so -inf - -inf never happens)."""
    return jnp.clip(reward_values(self.reward, tokens) / self.beta, -POTENTIAL_BOUND,
                    POTENTIAL_BOUND)

  def weigh(self, out: StepOut, state: ParticleState) -> tuple[jax.Array, jax.Array]:
    if self.reward is None:
      return state.log_w + jnp.sum(out.logp, axis=-1), state.twist
    twist = self._potential(out.predicted)
    return twist - state.base, twist

  def resamples_at(self, out: StepOut, index: jax.Array) -> jax.Array:
    return out.boundary if self.every == 0 else (index + 1) % self.every == 0

  def weigh_finish(self, tokens, logp, state: ParticleState) -> jax.Array:
    if self.reward is None:
      return state.log_w + jnp.sum(logp, axis=-1)
    return self._potential(tokens) - state.base


@dataclasses.dataclass(frozen=True)
class ParticleGibbs(Smc):
  """Particle Gibbs (Dang et al. 2025): `iterations` passes of SMC over the decode, each after
  the first conditional on a reference, the line of ancestors drawn (by the final weights)
  from the pass before: particle 0 of each example replays the reference's steps exactly (the
  same step keys) and is never replaced when the others resample. The returned particle is
  chosen from the last pass as `Smc` chooses. Costs `iterations x num` decodes.

  Attributes:
    ess_threshold: as `Smc`'s, but 1 by default: conditional SMC resamples at every allowed
      step (Andrieu, Doucet and Holenstein 2010), and with 2 particles a threshold below 1
      never would.
    iterations: passes, >= 1 (1: `Smc` with the same options, the same tokens).
    (the others as `Smc`'s; multinomial resampling only: keeping particle 0 out of a
    systematic draw is not a valid conditional resampling)
  """

  ess_threshold: float = 1.0
  iterations: int = 2

  def __post_init__(self):
    super().__post_init__()
    check_int("iterations", self.iterations, 1)
    if self.resampler != "multinomial":
      raise ValueError(f"ParticleGibbs resamples multinomially (conditional systematic "
                       f"resampling is not implemented), got resampler={self.resampler!r}")

  @property
  def passes(self) -> int:
    return self.iterations


@dataclasses.dataclass(frozen=True)
class ParticlesConfig:
  """A particle method as flat options (`remdm-sample --particles.kind=smc
  --particles.num=4`, a job's manifest): self-scored methods only (a reward is a function,
  given in Python)."""

  kind: str = option("none", "none | best_of_n | smc (self-rewarding) | gibbs (particle Gibbs)")
  num: int = option(1, "particles per example")
  resampler: str = option("multinomial", "smc: multinomial | systematic; gibbs: multinomial")
  ess_threshold: float | None = option(None, "smc, gibbs: resample when the effective size < "
                                            "this x num (None: 0.5 for smc, 1 for gibbs)")
  every: int = option(0, "smc, gibbs: resample after every k-th step (0: at block ends, or "
                         "every diffusion step)")
  iterations: int = option(2, "gibbs: conditional SMC passes")

  KINDS: ClassVar[tuple] = ("none", "best_of_n", "smc", "gibbs")
  USES: ClassVar[dict] = {"none": (), "best_of_n": ("num",),
                          "smc": ("num", "resampler", "ess_threshold", "every"),
                          "gibbs": ("num", "resampler", "ess_threshold", "every",
                                    "iterations")}

  def __post_init__(self):
    check_fields(self)
    check_choice("particles kind", self.kind, self.KINDS)
    unused = [f.name for f in dataclasses.fields(self) if f.name != "kind"
              and f.name not in self.USES[self.kind] and getattr(self, f.name) != f.default]
    if unused:
      raise ValueError(f"particles kind {self.kind!r} does not use {', '.join(unused)}; "
                       f"leave {'them' if len(unused) > 1 else 'it'} out or pick a kind that "
                       "does")
    self.method()   # the method's own checks

  def record(self) -> dict:
    """The options as a job's manifest records them: the threshold the method uses, not
    None, so a folder's record does not change meaning when a default does."""
    options = dataclasses.asdict(self)
    if "ess_threshold" in self.USES[self.kind]:
      options["ess_threshold"] = self.method().ess_threshold
    return options

  def method(self) -> Particles | None:
    """The `Particles` method, or None for kind "none"."""
    if self.kind == "none":
      return None
    if self.kind == "best_of_n":
      return BestOfN(self.num)
    smc = dict(resampler=self.resampler, every=self.every)
    if self.ess_threshold is not None:
      smc["ess_threshold"] = self.ess_threshold
    if self.kind == "gibbs":
      return ParticleGibbs(self.num, iterations=self.iterations, **smc)
    return Smc(self.num, **smc)


def check_particles(particles) -> Particles | None:
  """`particles` if it is None or a `Particles` method, else an `ArgumentTypeError`."""
  if particles is not None and not isinstance(particles, Particles):
    raise ArgumentTypeError(f"particles must be None or a method from remdm_jax.particles "
                            f"(BestOfN(num), Smc(num, ...)), got {type(particles).__name__}")
  return particles


def check_particle_call(particles: Particles | None, batch_size: int, seq_len: int) -> None:
  """Checks of a call's particles that need its shape: the reward (`check_reward`) and the
  number of rows, `B x P` (below 2^31)."""
  if particles is None:
    return
  rows = batch_size * particles.num
  if rows >= 2 ** 31:
    raise ValueError(f"particles.num x batch_size must be below 2^31 rows, got "
                     f"{particles.num} x {batch_size}")
  if particles.reward_fn is not None:
    check_reward(particles.reward_fn, rows, seq_len)


def resample(key: jax.Array, log_w: jax.Array, resampler: str) -> jax.Array:
  """Ancestors `[P] int32` of `P` particles with log-weights `log_w [P]`: multinomial (i.i.d.
  draws) or systematic (one uniform `u`, the points `(u + i) / P` on the weights' CDF); both
  draw index `i` `P * w_i` times in expectation."""
  size = log_w.shape[0]
  if resampler == "multinomial":
    return jax.random.categorical(key, log_w, shape=(size,)).astype(jnp.int32)
  cdf = jnp.cumsum(jax.nn.softmax(log_w))
  points = (jax.random.uniform(key, (), jnp.float32) + jnp.arange(size)) / size
  return jnp.minimum(jnp.searchsorted(cdf, points, side="right"), size - 1).astype(jnp.int32)


def effective_size(log_w: jax.Array) -> jax.Array:
  """`1 / sum(w^2)` of the normalised weights, over the last axis: `[..., P] -> [...]`."""
  return 1.0 / jnp.sum(jax.nn.softmax(log_w, axis=-1) ** 2, axis=-1)
