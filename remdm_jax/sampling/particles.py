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
  reward of its tokens, or without a reward the highest confidence (the sum, over the
  positions it decoded, of the model's log-probability of each token when it was last
  committed; every particle of an example decodes the same positions, so this ranks as the
  mean).
- `Smc(num, reward=None, ...)`: sequential Monte Carlo. Without a reward it is self-rewarding
  SMC (Luo et al. 2026; Algolzw/self-rewarding-smc): a step's incremental log-weight is the
  sum of the model's log-probabilities (SUBS, temperature 1) of the tokens it committed. With
  a reward `r` it is reward SMC (Ou et al. 2025, the "reverse" proposal of J-zin/smc_ddm_iclr):
  the potential of a particle is `r(x_hat) / beta`, `x_hat` the step's clean-sequence
  prediction (its tokens, and the argmax of the step's logits where still masked; block
  decoding predicts the current block only, later blocks stay masked), the incremental
  log-weight its change, and the last potential is that of the decoded tokens, so the
  weighted particles target `p(x) exp(r(x) / beta)`. An example resamples when its effective
  sample size falls below `ess_threshold * num`, at the steps `every` names; its weights
  then restart at zero.

Every result says what it cost (`ParticleResult.nfe`, model calls per example).

References:
  Luo et al., "Self-Rewarding Sequential Monte Carlo for Masked Diffusion Language Models",
  arXiv 2602.01849 (Algolzw/self-rewarding-smc, `llada/generate_smc.py`).
  Ou et al., "Inference-time scaling of diffusion language models with particle Gibbs sampling
  / SMC", arXiv 2505.22524 (J-zin/smc_ddm_iclr).
"""

from __future__ import annotations

import abc
import dataclasses
from typing import Callable, ClassVar, NamedTuple

import jax
import jax.numpy as jnp

from remdm_jax.sampling.decoder import Decoder, Needs, RunShape, StepOut
from remdm_jax.validation import ArgumentTypeError, check_choice, check_fields, check_range, option

__all__ = ["BestOfN", "ParticleResult", "ParticleState", "Particles", "ParticlesConfig", "Smc",
           "effective_size", "resample"]

PARTICLE_STREAM = 0xFFFFFFFF   # fold_in data of the particles' keys (no scan reaches it)
RESAMPLE_STREAM = 0xFFFFFFFE   # fold_in data of the resampling keys
RESAMPLERS = ("multinomial", "systematic")


class ParticleResult(NamedTuple):
  """Every particle of a call (`sample(..., particles=..., return_particles=True)`)."""

  tokens: jax.Array        # [B, L] int32, the chosen particle of each example
  particles: jax.Array     # [B, P, L] int32, every particle's tokens
  log_weights: jax.Array   # [B, P] float32, log-weights since the last resampling
  scores: jax.Array        # [B, P] float32, what `select` ranked (reward, confidence, weight)
  chosen: jax.Array        # [B] int32, the chosen particle
  nfe: jax.Array           # [] int32, model calls per example (particles x calls)
  nonfinite: jax.Array     # [B] bool, some particle's logits were not finite where drawn


class ParticleState(NamedTuple):
  """The particle layer's carry (rows `B * P`)."""

  log_w: jax.Array         # [N] float32, log-weights since the last resampling
  twist: jax.Array         # [N] float32, the last potential r(x_hat) / beta (reward SMC)
  logp: jax.Array          # [N, L] float32, log p of each position's token when committed
  calls: jax.Array         # [] int32, model calls so far


def _check_reward(reward) -> None:
  if reward is not None and not callable(reward):
    raise ArgumentTypeError(f"reward must be a function tokens [N, L] int32 -> [N] float32 "
                            f"(jittable) or None, got {reward!r:.60}")


@dataclasses.dataclass(frozen=True)
class Particles(abc.ABC):
  """A particle method: how particles are weighed, resampled and chosen (see the module
  docstring). Subclasses are frozen dataclasses (static under `jit`)."""

  num: int

  def __post_init__(self):
    check_range("num", self.num, 1)

  @property
  @abc.abstractmethod
  def select(self) -> str:
    """How the returned particle is chosen: "reward" (the highest reward of its tokens),
    "confidence" (the highest summed log-probability of its committed tokens) or "weight"
    (a draw in proportion to the final weights: the SMC estimate of its target)."""

  @property
  def reward_fn(self) -> Callable | None:
    return getattr(self, "reward", None)

  @abc.abstractmethod
  def needs(self) -> Needs:
    """What the decoder's steps must report."""

  def increment(self, out: StepOut, state: ParticleState) -> tuple[jax.Array, jax.Array]:
    """A step's `(incremental log-weight [N], new twist [N])`; none by default."""
    return jnp.zeros_like(state.log_w), state.twist

  def resamples_at(self, out: StepOut, index: jax.Array) -> jax.Array | None:
    """`[] bool`: whether an example may resample after step `index`; None: the method never
    resamples (the default)."""
    return None

  def finish_increment(self, tokens: jax.Array, logp: jax.Array,
                       state: ParticleState) -> jax.Array:
    """The incremental log-weight of the decoder's finish `[N]`; none by default."""
    return jnp.zeros_like(state.log_w)


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
      a clean-sequence estimate (masks where the decoder has not predicted yet).
    beta: > 0, the reward's temperature (the target is `p(x) exp(r(x) / beta)`).
    resampler: "multinomial" (the self-rewarding reference) or "systematic" (the reward
      reference).
    ess_threshold: in [0, 1]; an example resamples when its effective sample size
      `1 / sum(w^2)` is below `ess_threshold * num` (0: never, 1: at every allowed step).
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
    check_range("beta", self.beta, 0.0, low_open=True)
    check_range("ess_threshold", self.ess_threshold, 0.0, 1.0)
    check_range("every", self.every, 0)
    if self.resampler not in RESAMPLERS:
      raise ValueError(f"resampler must be one of {RESAMPLERS}, got {self.resampler!r}")
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

  def increment(self, out: StepOut, state: ParticleState) -> tuple[jax.Array, jax.Array]:
    if self.reward is None:
      return jnp.sum(out.logp, axis=-1), state.twist
    twist = _reward(self.reward, out.predicted) / self.beta
    return twist - state.twist, twist

  def resamples_at(self, out: StepOut, index: jax.Array) -> jax.Array:
    return out.boundary if self.every == 0 else (index + 1) % self.every == 0

  def finish_increment(self, tokens, logp, state: ParticleState) -> jax.Array:
    if self.reward is None:
      return jnp.sum(logp, axis=-1)
    return _reward(self.reward, tokens) / self.beta - state.twist


@dataclasses.dataclass(frozen=True)
class ParticlesConfig:
  """A particle method as flat options (`remdm-sample --particles.kind=smc
  --particles.num=4`, a job's manifest): self-scored methods only (a reward is a function,
  given in Python)."""

  kind: str = option("none", "none | best_of_n | smc (self-rewarding)")
  num: int = option(1, "particles per example")
  resampler: str = option("multinomial", "smc: multinomial | systematic")
  ess_threshold: float = option(0.5, "smc: resample when the effective size < this x num")
  every: int = option(0, "smc: resample after every k-th step (0: at block ends, or every "
                         "diffusion step)")

  KINDS: ClassVar[tuple] = ("none", "best_of_n", "smc")

  def __post_init__(self):
    check_fields(self)
    check_choice("particles kind", self.kind, self.KINDS)
    self.method()   # the method's own checks

  def method(self) -> Particles | None:
    """The `Particles` method, or None for kind "none"."""
    if self.kind == "none":
      return None
    if self.kind == "best_of_n":
      return BestOfN(self.num)
    return Smc(self.num, resampler=self.resampler, ess_threshold=self.ess_threshold,
               every=self.every)


def _reward(fn: Callable, tokens: jax.Array) -> jax.Array:
  """`fn(tokens)` as `[N] float32`, its shape checked."""
  value = jnp.asarray(fn(tokens))
  if value.shape != tokens.shape[:1]:
    raise ValueError(f"reward must return one value per row, [{tokens.shape[0]}], got "
                     f"shape {list(value.shape)}")
  return value.astype(jnp.float32)


def check_particles(particles) -> Particles | None:
  """`particles` if it is None or a `Particles` method, else an `ArgumentTypeError`."""
  if particles is not None and not isinstance(particles, Particles):
    raise ArgumentTypeError(f"particles must be None or a method from remdm_jax.particles "
                            f"(BestOfN(num), Smc(num, ...)), got {type(particles).__name__}")
  return particles


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


def particle_keys(keys: jax.Array, num: int) -> jax.Array:
  """`[B * P]` keys: particle 0 of example `b` has the example's key, particle `p > 0`
  `fold_in(fold_in(keys[b], PARTICLE_STREAM), p)`."""
  def of_example(key):
    base = jax.random.fold_in(key, PARTICLE_STREAM)
    others = jax.vmap(lambda p: jax.random.fold_in(base, p))(jnp.arange(1, num))
    return jnp.concatenate([key[None], others])
  return jax.vmap(of_example)(keys).reshape(-1)


def gather_rows(tree, rows: jax.Array):
  """Every array leaf of `tree` with its leading rows (`N`, or `c * N` stacked copies) taken
  at `rows [N] int32`; scalar leaves unchanged (see `Scan`).

  Raises:
    ValueError: a leaf whose leading axis is not a multiple of `N`.
  """
  n = rows.shape[0]

  def take(leaf):
    if leaf.ndim == 0:
      return leaf
    if leaf.shape[0] % n:
      raise ValueError(f"particles resample the decoder's carry by its leading axis, the "
                       f"rows ({n}); a carried array (a key-value cache?) has shape "
                       f"{list(leaf.shape)}: a denoiser's cache must lead with the batch")
    copies = leaf.reshape((leaf.shape[0] // n, n) + leaf.shape[1:])
    return jnp.take(copies, rows, axis=1).reshape(leaf.shape)

  return jax.tree.map(take, tree)


def _maybe_resample(method: Particles, example_keys, index, allowed, carry, state: ParticleState):
  """Resamples the examples whose effective size is low (when `allowed`), gathering the
  decoder's carry and the layer's state; weights of resampled examples restart at 0."""
  num = method.num
  log_w = state.log_w.reshape(-1, num)                                       # [B, P]
  due = allowed & (effective_size(log_w) < method.ess_threshold * num)        # [B]
  draw_keys = jax.vmap(lambda k: jax.random.fold_in(
      jax.random.fold_in(k, RESAMPLE_STREAM), index))(example_keys)
  ancestors = jax.vmap(lambda k, w: resample(k, w, method.resampler))(draw_keys, log_w)
  ancestors = jnp.where(due[:, None], ancestors, jnp.arange(num, dtype=jnp.int32))
  rows = (jnp.arange(log_w.shape[0], dtype=jnp.int32)[:, None] * num + ancestors).reshape(-1)

  def gather():
    moved_carry, moved = gather_rows((carry, state), rows)
    restart = jnp.repeat(due, num)
    return moved_carry, moved._replace(log_w=jnp.where(restart, 0.0, moved.log_w))

  return jax.lax.cond(jnp.any(due), gather, lambda: (carry, state))


def _choose(method: Particles, example_keys, index, tokens, state: ParticleState):
  """`(scores [B, P], chosen [B] int32)` by `method.select`."""
  num = method.num
  if method.select == "reward":
    scores = _reward(method.reward_fn, tokens).reshape(-1, num)
  elif method.select == "confidence":
    scores = jnp.sum(state.logp, axis=-1).reshape(-1, num)
  else:
    scores = state.log_w.reshape(-1, num)
  if method.select != "weight":
    return scores, jnp.argmax(scores, axis=-1).astype(jnp.int32)
  keys = jax.vmap(lambda k: jax.random.fold_in(jax.random.fold_in(k, RESAMPLE_STREAM),
                                               index))(example_keys)
  return scores, jax.vmap(jax.random.categorical)(keys, scores).astype(jnp.int32)


def _committed(logp: jax.Array, out) -> jax.Array:
  """`logp [N, L]` after a step or finish `out`: the committed tokens' log-probabilities
  where it unmasked, 0 where it remasked (unchanged when the decoder reports none)."""
  if out.logp is None:
    return logp
  remask = getattr(out, "remask", jnp.zeros_like(out.unmask))
  return jnp.where(out.unmask, out.logp, jnp.where(remask, 0.0, logp))


def run_particles(method: Particles, decoder: Decoder, keys, denoiser, plan, prompt,
                  shape: RunShape) -> ParticleResult:
  """The decode of `B` examples as `B * P` particle rows in the decoder's scan (traceable).
  `keys [B]` are the examples' keys, `prompt` None or a checked `[B, L]` template."""
  num, batch = method.num, shape.batch_size
  rows_shape = dataclasses.replace(shape, batch_size=batch * num, record=False)
  if prompt is not None:
    prompt = jnp.repeat(prompt, num, axis=0)
  scan = decoder.start(particle_keys(keys, num), denoiser, plan, prompt, rows_shape,
                       method.needs())
  n_rows, length = batch * num, shape.seq_len
  state = ParticleState(jnp.zeros((n_rows,), jnp.float32), jnp.zeros((n_rows,), jnp.float32),
                 jnp.zeros((n_rows, length), jnp.float32), jnp.int32(0))

  def body(both, indexed):
    (carry, state), (index, x) = both, indexed
    carry, out = scan.step(carry, x)
    increment, twist = method.increment(out, state)
    state = ParticleState(state.log_w + increment, twist, _committed(state.logp, out),
                   state.calls + out.called.astype(jnp.int32))
    allowed = method.resamples_at(out, index)
    if allowed is not None:
      carry, state = _maybe_resample(method, keys, index, allowed, carry, state)
    return (carry, state), None

  steps = jax.tree.leaves(scan.xs)[0].shape[0]
  (carry, state), _ = jax.lax.scan(body, (scan.carry, state),
                                   (jnp.arange(steps, dtype=jnp.int32), scan.xs))
  finish = scan.finish(carry)
  state = state._replace(log_w=state.log_w + method.finish_increment(finish.tokens,
                                                                     finish.logp, state),
                         logp=_committed(state.logp, finish),
                         calls=state.calls + finish.called.astype(jnp.int32))
  scores, chosen = _choose(method, keys, steps, finish.tokens, state)
  every = finish.tokens.reshape(batch, num, length)
  return ParticleResult(
      tokens=jnp.take_along_axis(every, chosen[:, None, None], axis=1)[:, 0],
      particles=every, log_weights=state.log_w.reshape(batch, num), scores=scores,
      chosen=chosen, nfe=state.calls * num,
      nonfinite=jnp.any(finish.nonfinite.reshape(batch, num), axis=1))
