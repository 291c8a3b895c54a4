"""The sampler: checks the call, then runs the plan's own decoder in one compiled program.

`make_sampler` is the one place a sampler is compiled: a jitted run whose arguments are the
key, the denoiser (a pytree: its parameters are leaves), the plan, the prompt and the first
index, so new values of any of them reuse the executable. `sample` is the one-call form (it
builds a sampler and runs it; inside a user's `jit`, `vmap` or sharded program it is traced
into the caller's computation), and `sample_with_plan` the traceable building block for a
user's own jitted function. A config becomes a plan (`plan.build_plan`) whose static rule is
its decoder (`remdm_jax.sampling.decoder.Decoder`): the diffusion steps of every strategy
(`steps.StepRule`, one scan over the strategy's table) or block decoding
(`blocks.BlockRule`). This module never asks which one it holds.

Randomness is per example and per position: example `i` of a call draws only from
`fold_in(key, first_index + i)`, step `j` from `fold_in(that, j)` (split into remask, unmask
and token keys), and the token of position `p` from `fold_in(token key, p)`. The tokens
therefore do not depend on the batch split, the number of devices or `position_chunk`.

References:
  Wang, Schiff, Sahoo, Kuleshov, "Remasking Discrete Diffusion Models with Inference-Time
  Scaling", NeurIPS 2025, arXiv 2503.00307 (sections 3-4, eq. 6).
  Sahoo et al., "Simple and Effective Masked Diffusion Language Models", 2024,
  arXiv 2406.07524 (SUBS, the final noise-removal step, caching).
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import numpy as np

from remdm_jax.denoiser import Denoiser, check_output, ensure_denoiser
from remdm_jax.sampling.particle_scan import run_particles
from remdm_jax.sampling.particles import Particles, check_particle_call, check_particles
from remdm_jax.sampling.checks import (NonFiniteLogitsError, as_typed_key, check_first_index,
                                       check_prompt, check_sizes, raise_nonfinite)
from remdm_jax.sampling.config import SamplerConfig
from remdm_jax.sampling.decoder import RunShape
from remdm_jax.sampling.plan import Plan, StepRule, build_plan, check_plan, rule_differences
from remdm_jax.sampling.step_rules import example_keys
from remdm_jax.sampling.trajectory import Trajectory
from remdm_jax.validation import ArgumentTypeError, coerce

__all__ = ["NonFiniteLogitsError", "Sampler", "make_sampler", "sample", "sample_with_plan"]


def _run(key, denoiser: Denoiser, plan, prompt, first_index, *, shape: RunShape,
         particles: Particles | None = None):
  """The whole run, traceable: `(tokens [B, L] int32, nonfinite [B] bool, records, every)`,
  where `records` is `(steps, unmasked, remasked)`, each `[n, B, L]`, or None, and `every`
  the `ParticleResult` of a particle run (else None). `prompt` is None or a checked
  `[B, L] int32` template. The plan's own decoder (`plan.rule`) runs it, under `particles`
  when given."""
  vocab_size = check_output(denoiser, shape.batch_size, shape.seq_len, shape.mask_id)
  plan.rule.check_vocab(vocab_size)
  keys = example_keys(key, first_index, shape.batch_size)
  every = None
  if particles is None:
    tokens, nonfinite, records = plan.rule.run(keys, denoiser, plan, prompt, shape)
  else:
    every, records = run_particles(particles, plan.rule, keys, denoiser, plan, prompt, shape)
    tokens, nonfinite = every.tokens, every.nonfinite
  sharding = shape.batch_sharding
  if isinstance(sharding, jax.sharding.NamedSharding):   # every process reads all flags
    nonfinite = jax.lax.with_sharding_constraint(
        nonfinite, jax.sharding.NamedSharding(sharding.mesh, jax.sharding.PartitionSpec()))
  return tokens, nonfinite, records, every


_jitted_run = jax.jit(_run, static_argnames=("shape", "particles"))


def _check_options(batch_sharding, return_trajectory, return_nonfinite, on_step,
                   particles=None, return_particles=False, record_predictions=False) -> None:
  """The run's options: a sharding or None, booleans, a callable or None, a particle method
  or None (`return_particles` needs one, and excludes a trajectory)."""
  if batch_sharding is not None and not isinstance(batch_sharding, jax.sharding.Sharding):
    raise ArgumentTypeError(f"batch_sharding must be a jax.sharding.Sharding (e.g. "
                            f"NamedSharding(mesh, P('data'))) or None, got "
                            f"{type(batch_sharding).__name__}")
  coerce("return_trajectory", return_trajectory, bool)
  coerce("return_nonfinite", return_nonfinite, bool)
  coerce("return_particles", return_particles, bool)
  coerce("record_predictions", record_predictions, bool)
  if record_predictions and not return_trajectory:
    raise ValueError("record_predictions=True records each step's clean-sequence estimate in "
                     "the trajectory; pass return_trajectory=True too")
  if on_step is not None and not callable(on_step):
    raise ArgumentTypeError(f"on_step must be a function of the step or None, got "
                            f"{on_step!r:.60}")
  if check_particles(particles) is None and return_particles:
    raise ValueError("return_particles=True needs particles (e.g. "
                     "particles=remdm_jax.particles.Smc(4))")
  if return_particles and return_trajectory:
    raise ValueError("return_particles and return_trajectory are exclusive: the trajectory "
                     "follows the chosen particle's line of ancestors; pass one of them")


def _check_call(denoiser: Denoiser, shape: RunShape, rule) -> None:
  """The checks that need no tracing: the sizes, then the decoder's own."""
  check_sizes(shape.batch_size, shape.seq_len, shape.mask_id)
  rule.check_call(denoiser, shape)


def _result(tokens, nonfinite, records, every, plan, first_index, return_trajectory,
            return_nonfinite, return_particles=False):
  """The documented return value; raises `NonFiniteLogitsError` unless `return_nonfinite`."""
  if not return_nonfinite:
    if isinstance(nonfinite, jax.core.Tracer):
      jax.debug.callback(raise_nonfinite, nonfinite, first_index)
    else:
      raise_nonfinite(nonfinite, first_index)
  if return_particles:
    return every
  if return_trajectory:
    return Trajectory(tokens, *records[:3], plan.rule.times(plan, records[0].shape[0]),
                      nonfinite, *records[3:])
  return (tokens, nonfinite) if return_nonfinite else tokens


def sample_with_plan(key: jax.Array, denoiser, plan: Plan, rule: StepRule | None = None, *,
                     batch_size: int, seq_len: int, mask_id: int,
                     prompt: jax.Array | None = None, first_index=0,
                     batch_sharding: jax.sharding.Sharding | None = None,
                     return_trajectory: bool = False, return_nonfinite: bool = False,
                     on_step: Callable[[jax.Array], None] | None = None,
                     particles: Particles | None = None, return_particles: bool = False,
                     record_predictions: bool = False):
  """`sample` with a prebuilt plan, for use inside a user's own `jax.jit`: pass `plan` as a
  jit argument to sweep eta, top_p or temperature without recompiling. Arguments and results
  as in `sample`; this function does not compile by itself (`make_sampler` does).

  The plan runs under its own switches (`plan.rule`, part of its pytree structure: a plan of
  another rule retraces the caller's jit). `rule`, when given, must be the plan's own (the
  second result of `build_plan`); another rule is refused, naming what differs.

  `on_step(step)`, when given, is called on the host as each step starts (a
  `jax.debug.callback`; progress reporting, possibly once per device); it does not change the
  tokens.
  """
  plan = check_plan(plan)
  _check_options(batch_sharding, return_trajectory, return_nonfinite, on_step, particles,
                 return_particles, record_predictions)
  if rule is not None and rule != plan.rule:
    differences = rule_differences(dataclasses.replace(plan, rule=rule), plan)
    raise ValueError(f"rule is not the plan's own ({'; '.join(differences)}, rule -> "
                     "plan's); pass the pair that build_plan(config) returns, or no rule")
  rule = plan.rule
  denoiser = ensure_denoiser(denoiser)
  shape = RunShape(batch_size, seq_len, mask_id, batch_sharding, return_trajectory, on_step,
                   predictions=record_predictions)
  _check_call(denoiser, shape, rule)
  check_particle_call(particles, batch_size, seq_len)
  first_index = check_first_index(first_index, batch_size)
  rule.check_prompt(prompt)
  if prompt is not None:
    prompt = check_prompt(prompt, batch_size, seq_len,
                          lambda: check_output(denoiser, batch_size, seq_len, mask_id))
  shape = dataclasses.replace(shape, extent=rule.extent(prompt, shape))
  outputs = _run(as_typed_key(key), denoiser, plan, prompt, first_index, shape=shape,
                 particles=particles)
  return _result(*outputs, plan, first_index, return_trajectory, return_nonfinite,
                 return_particles)


class Sampler:
  """A sampler for one denoiser structure, config and shape (`make_sampler`).

  `sampler(key, params=None, prompt=None, *, plan=None, first_index=0)` returns what `sample`
  returns. The key, the parameters (None: the denoiser's own), the prompt, the plan (eta,
  top_p, temperature sweeps) and `first_index` are arguments of one jitted function: new
  values never recompile.
  """

  def __init__(self, denoiser, config: SamplerConfig, *, batch_size: int, seq_len: int,
               mask_id: int, batch_sharding=None, return_trajectory: bool = False,
               return_nonfinite: bool = False, on_step=None, particles=None,
               return_particles: bool = False, record_predictions: bool = False):
    self.denoiser = ensure_denoiser(denoiser)
    _check_options(batch_sharding, return_trajectory, return_nonfinite, on_step, particles,
                   return_particles, record_predictions)
    self.particles, self.return_particles = particles, return_particles
    self.plan, self.rule = build_plan(config)
    self.shape = RunShape(batch_size, seq_len, mask_id, batch_sharding, return_trajectory,
                          on_step, predictions=record_predictions)
    _check_call(self.denoiser, self.shape, self.rule)
    check_particle_call(particles, batch_size, seq_len)
    self.batch_size, self.seq_len, self.mask_id = batch_size, seq_len, mask_id
    self.return_trajectory, self.return_nonfinite = return_trajectory, return_nonfinite
    self._vocab_size = None
    self._compiled = None
    self._compiled_extent = 0

  def _vocab_size_of(self, denoiser: Denoiser) -> int:
    """V of the denoiser's logits, traced abstractly once per sampler."""
    if self._vocab_size is None:
      self._vocab_size = check_output(denoiser, self.batch_size, self.seq_len, self.mask_id)
    return self._vocab_size

  def _arguments(self, key, params, prompt, plan, first_index):
    """The jitted run's arguments: `(key, denoiser, plan, prompt [B, L] int32 (all masks for
    None: one signature, one compile), first_index)`."""
    if params is not None and not self.denoiser.takes_params:
      raise ValueError("params were given, but this denoiser is a plain function without "
                       "parameters; wrap an apply(params, z, t) function as "
                       "remdm_jax.Denoiser(apply) to pass them")
    if params is not None and self.denoiser.params is not None:
      own, given = jax.tree.structure(self.denoiser.params), jax.tree.structure(params)
      if own != given:
        raise ValueError(f"params must have the structure of the denoiser's own parameters "
                         f"(its pytree), got another: {str(given):.200} instead of "
                         f"{str(own):.200}")
    denoiser = self.denoiser if params is None else self.denoiser.with_params(params)
    self.rule.check_prompt(prompt)
    prompt = (np.full((self.batch_size, self.seq_len), self.mask_id, np.int32) if prompt is None
              else check_prompt(prompt, self.batch_size, self.seq_len,
                                lambda: self._vocab_size_of(denoiser)))
    return (as_typed_key(key), denoiser, self._own_kind(plan), prompt,
            first_index if isinstance(first_index, jax.Array) else np.int32(first_index))

  def _own_kind(self, plan) -> Plan:
    """The sampler's plan for None; else `plan`, if it was built for the sampler's static
    settings (the same rule and number of steps), or a `ValueError` naming what differs."""
    if plan is None:
      return self.plan
    differences = rule_differences(self.plan, check_plan(plan))
    if differences:
      hint = (" (a top_p sweep needs top_p < 1 in the sampler's config)"
              if any(d.startswith("use_top_p") for d in differences) else "")
      raise ValueError(
          "plan was built from a config with other static settings than this sampler's "
          f"({'; '.join(differences)}, sampler -> plan); a sampler runs the plans of configs "
          "that differ only in eta, top_p (below 1) or temperature. Build a "
          f"sampler for that config: make_sampler(denoiser, config, ...){hint}")
    return plan

  def compile(self, key, params=None, prompt=None, *, plan: Plan | None = None,
              first_index=0) -> "Sampler":
    """Compiles now for these arguments (e.g. before a job writes anything). Later calls
    outside a trace use that executable, so their arguments must have the same shapes,
    dtypes and shardings (JAX says which differs); calls inside a trace go through `jit`.

    `key` and the leaves of `params` may be `jax.ShapeDtypeStruct`s (with shardings), to
    compile, or inspect `compiled().memory_analysis()`, without any weights: a typed key's
    struct is `jax.eval_shape(jax.random.key, 0)`. Their values are then not checked."""
    abstract_key = isinstance(key, jax.ShapeDtypeStruct)
    if abstract_key and (key.shape != () or
                         not jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key)):
      raise ValueError(f"an abstract key must be a typed key's struct (shape [], e.g. "
                       f"jax.eval_shape(jax.random.key, 0)), got {key.dtype}{list(key.shape)}")
    arguments = self._arguments(jax.random.key(0) if abstract_key else key, params, prompt,
                                plan, check_first_index(first_index, self.batch_size))
    if abstract_key:
      arguments = (key,) + arguments[1:]
    shape = self._shape_for(arguments[3])
    self._compiled = _jitted_run.lower(*arguments, shape=shape,
                                       particles=self.particles).compile()
    self._compiled_extent = shape.extent
    return self

  def _shape_for(self, prompt) -> RunShape:
    """The run's shape with the extent the prompt needs (block decoding: its blocks)."""
    return dataclasses.replace(self.shape, extent=self.rule.extent(prompt, self.shape))

  def num_steps(self, prompt=None) -> int:
    """Steps of the scan a call with `prompt` runs (what `on_step` counts; the trajectory's
    length but under particle Gibbs, whose passes each run them, the trajectory being of the
    last): the table's for the diffusion strategies; for block decoding, blocks x steps per
    block, the blocks those of the compiled run when it covers the prompt's longest tail (or
    when no prompt is given), else enough for that tail (all of `seq_len` for None)."""
    if prompt is not None:
      prompt = check_prompt(prompt, self.batch_size, self.seq_len, lambda: None)
    extent = self.rule.extent(prompt, self.shape)
    if self._compiled is not None and (prompt is None or extent <= self._compiled_extent):
      extent = self._compiled_extent
    passes = self.particles.passes if self.particles is not None else 1
    return passes * self.rule.trajectory_length(self.plan, extent)

  def compiled(self) -> jax.stages.Compiled:
    """The executable of the last `compile` (for `memory_analysis()`, `as_text()`).

    Raises:
      ValueError: `compile` was not called.
    """
    if self._compiled is None:
      raise ValueError("this sampler was not compiled ahead of time; call "
                       "sampler.compile(key, params) first")
    return self._compiled

  def __call__(self, key, params=None, prompt=None, *, plan: Plan | None = None,
               first_index=0):
    """Tokens `[B, L] int32` (or what `sample` returns with the sampler's options) for a key,
    optionally other parameters of the denoiser's structure, a prompt, a plan of the same
    config kind and the batch's first global index."""
    first_index = check_first_index(first_index, self.batch_size)
    arguments = self._arguments(key, params, prompt, plan, first_index)
    traced = any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree.leaves(arguments))
    shape = self._shape_for(arguments[3])
    if (self._compiled is not None and not traced
        and shape.extent <= self._compiled_extent):   # a smaller extent: its work is skipped
      outputs = self._compiled(*arguments)
    else:
      outputs = _jitted_run(*arguments, shape=shape, particles=self.particles)
    return _result(*outputs, arguments[2], first_index, self.return_trajectory,
                   self.return_nonfinite, self.return_particles)


def make_sampler(denoiser, config: SamplerConfig, *, batch_size: int, seq_len: int,
                 mask_id: int, batch_sharding=None, return_trajectory: bool = False,
                 return_nonfinite: bool = False, on_step=None, particles=None,
                 return_particles: bool = False, record_predictions: bool = False) -> Sampler:
  """The one compiled path: a sampler whose parameters, key, prompt, plan and first index are
  arguments of one jitted run.

  Args:
    denoiser: a `remdm_jax.Denoiser` (e.g. `remdm_jax.models.as_denoiser(model)`, whose
      parameters are its pytree leaves; `Denoiser(apply)` for an `apply(params, z, t)`
      function), or a plain function `(z, t) -> logits` (assumed to read t; its closed-over
      arrays become constants of the executable).
    config: as in `sample` (and `batch_size`, `seq_len`, `mask_id`, `batch_sharding`,
      `return_trajectory`, `return_nonfinite`).
    on_step: optional host callback `on_step(step)` as each step starts (progress bars). It
      is static: a new callback compiles a new executable.
    particles, return_particles, record_predictions: as in `sample` (static: another value
      compiles anew).

  Returns:
    A `Sampler`: `sampler(key, params=None, prompt=None, *, plan=None, first_index=0)`. The
    first call compiles (or `sampler.compile(...)` ahead of time); calls with new keys,
    parameters of the same structure, prompts, plans (from `build_plan` of a config with the
    same static settings) or first indices reuse the executable. Samplers over the same
    denoiser functions, config and shape share it too.

  Raises:
    ValueError, TypeError: bad sizes, config or denoiser, or `cache=True` for a denoiser that
      reads t (before anything is compiled).

  Examples:
    >>> import jax, jax.numpy as jnp, remdm_jax
    >>> apply = lambda w, z, t: w * jnp.ones(z.shape + (5,), jnp.float32)
    >>> run = remdm_jax.make_sampler(remdm_jax.Denoiser(apply),
    ...                              remdm_jax.SamplerConfig(num_steps=4),
    ...                              batch_size=2, seq_len=3, mask_id=4)
    >>> run(jax.random.key(0), jnp.float32(1.0)).shape
    (2, 3)
  """
  return Sampler(denoiser, config, batch_size=batch_size, seq_len=seq_len, mask_id=mask_id,
                 batch_sharding=batch_sharding, return_trajectory=return_trajectory,
                 return_nonfinite=return_nonfinite, on_step=on_step, particles=particles,
                 return_particles=return_particles, record_predictions=record_predictions)


def sample(key: jax.Array, denoiser, config: SamplerConfig, *, batch_size: int,
           seq_len: int, mask_id: int, prompt: jax.Array | None = None, first_index=0,
           batch_sharding: jax.sharding.Sharding | None = None,
           return_trajectory: bool = False, return_nonfinite: bool = False,
           particles=None, return_particles: bool = False, record_predictions: bool = False):
  """Samples sequences from a masked diffusion model with MDLM or a ReMDM strategy.

  Starting from all masks (or `prompt`), runs the strategy's steps (paper eq. 6) in one
  `lax.scan`, then one greedy noise-removal call. This is `make_sampler(denoiser, config,
  ...)(key, prompt=prompt, first_index=first_index)`: the denoiser's parameters are
  arguments, so repeated calls with the same denoiser functions, config and shape reuse the
  compiled run. Inside `jax.jit`, `vmap` or a sharded program it is traced into the caller's
  computation.

  Args:
    key: `jax.random.key(seed)` or a legacy `jax.random.PRNGKey(seed)`.
    denoiser: a `remdm_jax.Denoiser`, or a function `(z [B, L] int32, t [B] float32) ->
      logits [B, L, V]` (any float dtype; V includes `mask_id`; raw logits, SUBS is applied
      here), which is assumed to read t.
    config: a `SamplerConfig` (static under jit).
    batch_size: B. seq_len: L. mask_id: the mask id, in [0, V).
    prompt: optional `[B, L]`, `[1, L]` or `[L]` int32 template (broadcast to the batch):
      `mask_id` at free positions; the other positions come back unchanged and are never
      remasked (prompts and infilling). Its ids are checked when it is concrete.
    first_index: global index of this batch's first example (int or traced int32); example
      `i` draws only from `fold_in(key, first_index + i)`.
    batch_sharding: optional sharding of `[B, L]` arrays (e.g. `NamedSharding(mesh,
      P("data"))`) to split the batch over devices inside a jitted call.
    return_trajectory: return a `Trajectory` (tokens after every step, what each step
      unmasked and remasked, the times, the non-finite flags) instead of the tokens; with
      particles, the steps of the chosen particle's line of ancestors.
    return_nonfinite: also return `[B] bool`, True for the examples whose logits were not
      finite where a token was drawn (see Raises), instead of raising.
    particles: None, or a method of `remdm_jax.particles` (`BestOfN(num)`, `Smc(num, ...)`):
      `num` particles per example decoded together, weighed, resampled, and one chosen per
      example (`Smc(1)` and `BestOfN(1)` give the plain decode's tokens).
    return_particles: return the `remdm_jax.particles.ParticleResult` (every particle, its
      log-weight and score, the chosen one, the model calls) instead of the tokens.
    record_predictions: with `return_trajectory`, the trajectory's `predicted` holds each
      step's clean-sequence estimate (its tokens, and the argmax of its logits where still
      masked; block decoding: the current block's), for temporal voting
      (`remdm_jax.eval.voting`). Costs the output head on every row at every step.

  Returns:
    `[B, L] int32` tokens, no `mask_id` left; with `return_nonfinite`, `(tokens, flags)`;
    with `return_trajectory`, a `Trajectory`; with `return_particles`, a
    `ParticleResult`.

  Raises:
    ValueError: bad sizes, key, prompt or denoiser output, or `cache=True` for a denoiser
      that reads t (before any compilation).
    NonFiniteLogitsError: the denoiser's logits were NaN, +inf, or -inf for every id but the
      mask, at a position where a token was drawn (a broken model would otherwise give
      plausible-looking ids). Under `jit` it is raised from a host callback when the result
      is computed, inside a `JaxRuntimeError` that carries its message. Pass
      `return_nonfinite=True` for per-example flags instead.

  Examples:
    >>> import jax, jax.numpy as jnp, remdm_jax
    >>> def denoiser(z, t):  # uniform over ids 0..3; id 4 is the mask
    ...   return jnp.zeros(z.shape + (5,), jnp.float32)
    >>> cfg = remdm_jax.SamplerConfig(strategy=remdm_jax.Cap(eta=0.1), num_steps=8)
    >>> out = remdm_jax.sample(jax.random.key(0), denoiser, cfg, batch_size=2, seq_len=6,
    ...                        mask_id=4)
    >>> out.shape, out.dtype, bool((out < 4).all())
    ((2, 6), dtype('int32'), True)
  """
  sampler = make_sampler(denoiser, config, batch_size=batch_size, seq_len=seq_len,
                         mask_id=mask_id, batch_sharding=batch_sharding,
                         return_trajectory=return_trajectory,
                         return_nonfinite=return_nonfinite, particles=particles,
                         return_particles=return_particles,
                         record_predictions=record_predictions)
  return sampler(key, prompt=prompt, first_index=first_index)
