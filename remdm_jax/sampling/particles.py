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
- `ParticleGibbs(num, iterations=k, ...)`: `k` passes of `Smc`, each after the first
  conditional on a line of ancestors drawn from the pass before (particle 0 replays it with
  its exact step keys and is never replaced).

Every result says what it cost (`ParticleResult.nfe`, model calls per example).

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

from remdm_jax.sampling.decoder import (Decoder, Finish, Needs, RunShape, Scan, StepOut,
                                       scan_indices)
from remdm_jax.sampling.step_rules import row_step_keys
from remdm_jax.validation import ArgumentTypeError, check_choice, check_fields, check_range, option

__all__ = ["BestOfN", "ParticleGibbs", "ParticleResult", "ParticleState", "Particles",
           "ParticlesConfig", "Smc", "effective_size", "resample"]

PARTICLE_STREAM = 0xFFFFFFFF   # fold_in data of the particles' keys (no scan reaches it)
RESAMPLE_STREAM = 0xFFFFFFFE   # fold_in data of the resampling keys
PASS_STREAM = 0xFFFFFFFD       # fold_in data of particle Gibbs' later passes' particle keys
RESAMPLERS = ("multinomial", "systematic")


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
  """The particle layer's carry (rows `B * P`)."""

  log_w: jax.Array         # [N] float32, log-weights since the last resampling
  twist: jax.Array         # [N] float32, the last potential r(x_hat) / beta (reward SMC)
  logp: jax.Array          # [N, L] float32, log p of each position's token when committed
  calls: jax.Array         # [] int32, model calls so far
  resampled: jax.Array     # [N] int32, how often the row's example resampled


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

  @property
  def passes(self) -> int:
    """Decodes of the `num` particles one call runs (particle Gibbs: its iterations)."""
    return 1

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

  kind: str = option("none", "none | best_of_n | smc (self-rewarding) | gibbs (particle Gibbs)")
  num: int = option(1, "particles per example")
  resampler: str = option("multinomial", "smc: multinomial | systematic")
  ess_threshold: float = option(0.5, "smc: resample when the effective size < this x num")
  every: int = option(0, "smc: resample after every k-th step (0: at block ends, or every "
                         "diffusion step)")
  iterations: int = option(2, "gibbs: conditional SMC passes")

  KINDS: ClassVar[tuple] = ("none", "best_of_n", "smc", "gibbs")

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
    smc = dict(resampler=self.resampler, ess_threshold=self.ess_threshold, every=self.every)
    if self.kind == "gibbs":
      return ParticleGibbs(self.num, iterations=self.iterations, **smc)
    return Smc(self.num, **smc)


@dataclasses.dataclass(frozen=True)
class ParticleGibbs(Smc):
  """Particle Gibbs (Dang et al. 2025): `iterations` passes of SMC over the decode, each after
  the first conditional on a reference, the line of ancestors drawn (by the final weights)
  from the pass before: particle 0 of each example replays the reference's steps exactly (the
  same step keys) and is never replaced when the others resample. The returned particle is
  chosen from the last pass as `Smc` chooses. Costs `iterations x num` decodes.

  Attributes:
    iterations: passes, >= 1 (1: `Smc` itself, the same tokens).
    (the others as `Smc`'s)
  """

  iterations: int = 2

  def __post_init__(self):
    super().__post_init__()
    check_range("iterations", self.iterations, 1)

  @property
  def passes(self) -> int:
    return self.iterations


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


def _stream_keys(example_keys, index, pass_index):
  """The resampling keys `[B]` of step `index` in pass `pass_index`: `fold_in(fold_in(example
  key, RESAMPLE_STREAM), index)`, and for a later pass of particle Gibbs that folded with
  the pass (the first pass draws as `Smc`)."""
  keys = jax.vmap(lambda k: jax.random.fold_in(jax.random.fold_in(k, RESAMPLE_STREAM),
                                               index))(example_keys)
  return jax.vmap(lambda k: jnp.where(pass_index > 0, jax.random.key_data(
      jax.random.fold_in(k, pass_index)), jax.random.key_data(k)))(keys)


def _maybe_resample(method: Particles, draw_keys, allowed, conditional, carry,
                    state: ParticleState):
  """Resamples the examples whose effective size is low (when `allowed`), gathering the
  decoder's carry and the layer's state; weights of resampled examples restart at 0. Under
  `conditional` (`[] bool`, particle Gibbs) particle 0 of each example, the reference, keeps
  its own row. Returns `(carry, state, ancestors [B, P] int32)`."""
  num = method.num
  log_w = state.log_w.reshape(-1, num)                                       # [B, P]
  due = allowed & (effective_size(log_w) < method.ess_threshold * num)        # [B]
  ancestors = jax.vmap(lambda k, w: resample(jax.random.wrap_key_data(k), w,
                                             method.resampler))(draw_keys, log_w)
  ancestors = ancestors.at[:, 0].set(jnp.where(conditional, 0, ancestors[:, 0]))
  ancestors = jnp.where(due[:, None], ancestors, jnp.arange(num, dtype=jnp.int32))
  rows = (jnp.arange(log_w.shape[0], dtype=jnp.int32)[:, None] * num + ancestors).reshape(-1)

  def gather():
    moved_carry, moved = gather_rows((carry, state), rows)
    restart = jnp.repeat(due, num)
    return moved_carry, moved._replace(log_w=jnp.where(restart, 0.0, moved.log_w),
                                       resampled=moved.resampled + restart)

  carry, state = jax.lax.cond(jnp.any(due), gather, lambda: (carry, state))
  return carry, state, ancestors


def _scores(method: Particles, tokens, state: ParticleState) -> jax.Array:
  """What `method.select` ranks, `[B, P]`."""
  if method.select == "reward":
    return _reward(method.reward_fn, tokens).reshape(-1, method.num)
  if method.select == "confidence":
    return jnp.sum(state.logp, axis=-1).reshape(-1, method.num)
  return state.log_w.reshape(-1, method.num)


def _choose(method: Particles, draw_keys, scores) -> jax.Array:
  """The chosen particle `[B] int32`: the highest score, or a draw by the weights."""
  if method.select != "weight":
    return jnp.argmax(scores, axis=-1).astype(jnp.int32)
  return jax.vmap(lambda k, w: jax.random.categorical(jax.random.wrap_key_data(k), w))(
      draw_keys, scores).astype(jnp.int32)


def _committed(logp: jax.Array, out) -> jax.Array:
  """`logp [N, L]` after a step or finish `out`: the committed tokens' log-probabilities
  where it unmasked, 0 where it remasked (unchanged when the decoder reports none)."""
  if out.logp is None:
    return logp
  remask = getattr(out, "remask", jnp.zeros_like(out.unmask))
  return jnp.where(out.unmask, out.logp, jnp.where(remask, 0.0, logp))


class _Pass(NamedTuple):
  """One (conditional) SMC pass over the decoder's scan."""

  finish: Finish              # the decoded rows
  state: ParticleState        # the weights and scores after the finish
  ancestors: jax.Array        # [n, B, P] int32, each step's resampling (identity: none)
  records: tuple | None       # each step's (z, unmask, remask[, predicted]), [n, B P, L]


def _smc_pass(method: Particles, scan: Scan, example_keys, row_keys, reference, pass_index,
              shape: RunShape) -> _Pass:
  """SMC over the decoder's steps. `row_keys [B P]` are the particles' keys; `reference` is
  None, or `(key data [n, B, 2], use [] bool)`: when `use`, particle 0 of each example takes
  the reference's step keys and is never replaced (conditional SMC, particle Gibbs)."""
  num, n_rows, length = method.num, row_keys.shape[0], shape.seq_len
  state = ParticleState(jnp.zeros((n_rows,), jnp.float32), jnp.zeros((n_rows,), jnp.float32),
                        jnp.zeros((n_rows, length), jnp.float32), jnp.int32(0),
                        jnp.zeros((n_rows,), jnp.int32))
  identity = jnp.broadcast_to(jnp.arange(num, dtype=jnp.int32), (n_rows // num, num))

  def body(both, indexed):
    (carry, state), (index, x) = both, indexed
    keys = row_step_keys(row_keys, index)
    conditional = jnp.bool_(False)
    if reference is not None:
      conditional = reference[1]
      own = jax.random.key_data(keys).reshape(n_rows // num, num, -1)
      first = jnp.where(conditional, reference[0][index], own[:, 0])
      keys = jax.random.wrap_key_data(own.at[:, 0].set(first).reshape(n_rows, -1))
    carry, out = scan.step(carry, x, keys)
    increment, twist = method.increment(out, state)
    state = ParticleState(state.log_w + increment, twist, _committed(state.logp, out),
                          state.calls + out.called.astype(jnp.int32), state.resampled)
    allowed = method.resamples_at(out, index)
    ancestors = identity
    if allowed is not None:
      carry, state, ancestors = _maybe_resample(
          method, _stream_keys(example_keys, index, pass_index), allowed, conditional, carry,
          state)
    record = None
    if shape.record:
      record = (out.z, out.unmask, out.remask) + ((out.predicted,) if shape.predictions else ())
    return (carry, state), (ancestors, record)

  (carry, state), (ancestors, records) = jax.lax.scan(body, (scan.carry, state),
                                                      (scan_indices(scan), scan.xs))
  finish = scan.finish(carry)
  state = state._replace(log_w=state.log_w + method.finish_increment(finish.tokens,
                                                                     finish.logp, state),
                         logp=_committed(state.logp, finish),
                         calls=state.calls + finish.called.astype(jnp.int32))
  return _Pass(finish, state, ancestors, records)


def _lineage(ancestors: jax.Array, chosen: jax.Array) -> jax.Array:
  """The particle of each example that ran each step of the chosen one's line of ancestors,
  `[n, B] int32`: backwards from `chosen [B]`, the row that ran step `j` is `ancestors[j]`
  of the row that held the line after it."""
  def back(holder, a):                       # holder [B]: the line's row after step j
    ran = jnp.take_along_axis(a, holder[:, None], axis=1)[:, 0]
    return ran, ran

  return jax.lax.scan(back, chosen, ancestors, reverse=True)[1]


def _lineage_keys(ancestors, chosen, row_keys, reference, num: int) -> jax.Array:
  """The step keys `[n, B, 2]` (key data) the chosen particle's line of ancestors ran with
  (the reference's where the line's row was particle 0 of a conditional pass)."""
  ran = _lineage(ancestors, chosen)
  batch = chosen.shape[0]

  def at_step(index, rows):
    own = jax.random.key_data(row_step_keys(row_keys, index)).reshape(batch, num, -1)
    mine = jnp.take_along_axis(own, rows[:, None, None], axis=1)[:, 0]
    return jnp.where((rows == 0)[:, None] & reference[1], reference[0][index], mine)

  return jax.vmap(at_step)(jnp.arange(ran.shape[0], dtype=jnp.int32), ran)


def _pass_keys(keys, num: int, pass_index):
  """Particle keys of pass `pass_index` (`particle_keys` for the first pass)."""
  first = particle_keys(keys, num)
  later = jax.vmap(lambda k: jax.random.fold_in(jax.random.fold_in(k, PASS_STREAM),
                                                pass_index))(first)
  return jax.random.wrap_key_data(jnp.where(pass_index > 0, jax.random.key_data(later),
                                            jax.random.key_data(first)))


def run_particles(method: Particles, decoder: Decoder, keys, denoiser, plan, prompt,
                  shape: RunShape) -> tuple[ParticleResult, tuple | None]:
  """The decode of `B` examples as `B * P` particle rows in the decoder's scan (traceable;
  `method.passes` of them for particle Gibbs). `keys [B]` are the examples' keys, `prompt`
  None or a checked `[B, L]` template. Returns the result and, when `shape.record`, the
  records of the chosen particle's line of ancestors (`Decoder.run`'s, `[n, B, L]` each; of
  the last pass)."""
  num, batch, length = method.num, shape.batch_size, shape.seq_len
  rows_shape = dataclasses.replace(shape, batch_size=batch * num)
  if prompt is not None:
    prompt = jnp.repeat(prompt, num, axis=0)
  needs = method.needs()
  scan = decoder.start(denoiser, plan, prompt, rows_shape,
                       needs._replace(predicted=needs.predicted or shape.predictions))
  steps = scan_indices(scan).shape[0]
  if method.passes == 1:
    last = _smc_pass(method, scan, keys, particle_keys(keys, num), None, 0, rows_shape)
    calls = last.state.calls
  else:
    def one_pass(carry, pass_index):
      reference, calls = carry
      row_keys = _pass_keys(keys, num, pass_index)
      done = _smc_pass(method, scan, keys, row_keys, reference, pass_index, rows_shape)
      weights = done.state.log_w.reshape(batch, num)
      chosen = _choose(dataclasses.replace(method, choose="weight"),
                       _stream_keys(keys, steps, pass_index), weights)
      line = _lineage_keys(done.ancestors, chosen, row_keys, reference, num)
      return ((line, jnp.bool_(True)), calls + done.state.calls), done

    empty = jnp.zeros((steps, batch) + jax.random.key_data(keys).shape[1:], jnp.uint32)
    (_, calls), passes = jax.lax.scan(one_pass, ((empty, jnp.bool_(False)), jnp.int32(0)),
                                      jnp.arange(method.passes, dtype=jnp.int32))
    last = jax.tree.map(lambda leaf: leaf[-1], passes)
  scores = _scores(method, last.finish.tokens, last.state)
  chosen = _choose(method, _stream_keys(keys, steps + 1, method.passes - 1), scores)
  every = last.finish.tokens.reshape(batch, num, length)
  result = ParticleResult(
      tokens=jnp.take_along_axis(every, chosen[:, None, None], axis=1)[:, 0],
      particles=every, log_weights=last.state.log_w.reshape(batch, num), scores=scores,
      chosen=chosen, nfe=calls * num,
      resamplings=last.state.resampled.reshape(batch, num)[:, 0],
      nonfinite=jnp.any(last.finish.nonfinite.reshape(batch, num), axis=1))
  records = None
  if shape.record:
    rows = jnp.arange(batch, dtype=jnp.int32)[None] * num + _lineage(last.ancestors, chosen)
    records = tuple(jnp.take_along_axis(r, rows[:, :, None], axis=1) for r in last.records)
  return result, records
