"""The particle layer's scan: `B * P` particle rows in the decoder's own scan, weighed,
resampled within each example, chosen (the methods: `remdm_jax.sampling.particles`).

Rows `b * P .. b * P + P - 1` are the particles of example `b`. Resampling gathers every leaf
of the decoder's carry per example (`gather_rows`: a leaf leads with the rows, or with `c`
stacked copies of them, as classifier-free guidance stacks its cache), so a sharded batch
keeps each example's particles on their device. Keys: particle 0 of example `b` runs with the
example's own key, particle `p > 0` with `fold_in(fold_in(that key, PARTICLE_STREAM), p)`; the
resampling draw after step `j` uses `fold_in(fold_in(example key, RESAMPLE_STREAM), j)`
(folded with the pass for particle Gibbs' later passes, whose particles' keys fold in
PASS_STREAM and the pass), a draw of the chosen particle `CHOOSE_STREAM`. An example resamples
only after a step that changed its tokens, so a step past its answer (which a batch of
shorter answers would not run) changes nothing, and tokens do not depend on the batch.
Particle Gibbs replays a line of ancestors by giving particle 0 the step keys that line ran
with (`Scan.step` takes each row's step keys).
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp

from remdm_jax.sampling.decoder import (Decoder, Finish, RunShape, Scan, announce, check_reports,
                                        record_of, scan_indices)
from remdm_jax.sampling.particles import (ParticleResult, Particles, ParticleState, confidence,
                                          effective_size, resample, reward_values)
from remdm_jax.sampling.step_rules import row_step_keys

PARTICLE_STREAM = 0xFFFFFFFF   # fold_in data of the particles' keys (no scan reaches it)
RESAMPLE_STREAM = 0xFFFFFFFE   # fold_in data of the resampling keys
PASS_STREAM = 0xFFFFFFFD       # fold_in data of particle Gibbs' later passes' particle keys
CHOOSE_STREAM = 0xFFFFFFFC     # fold_in data of the draws of a pass's chosen particle
UNIFORM = 1.0 - 1e-5           # an effective size above UNIFORM x num: equal weights


def _wrap(data: jax.Array, like: jax.Array) -> jax.Array:
  """Typed keys from key data, of the implementation of the keys `like`."""
  return jax.random.wrap_key_data(data, impl=jax.random.key_impl(like))


def particle_keys(keys: jax.Array, num: int) -> jax.Array:
  """`[B * P]` keys: particle 0 of example `b` has the example's key, particle `p > 0`
  `fold_in(fold_in(keys[b], PARTICLE_STREAM), p)`."""
  def of_example(key):
    base = jax.random.fold_in(key, PARTICLE_STREAM)
    others = jax.vmap(lambda p: jax.random.fold_in(base, p))(jnp.arange(1, num))
    return jnp.concatenate([key[None], others])
  return jax.vmap(of_example)(keys).reshape(-1)


def gather_rows(tree, ancestors: jax.Array):
  """Every array leaf of `tree` with its rows (`B * P`, or `c` stacked copies of them)
  replaced per example by those of `ancestors [B, P] int32` (particle `p` of example `b`
  takes particle `ancestors[b, p]`'s row); scalar leaves unchanged (see `Scan`).

  Raises:
    ValueError: a leaf whose leading axis is not the rows or two stacked copies of them.
  """
  batch, num = ancestors.shape
  rows = batch * num
  # per example (the batch stays a batching axis of the gather, so a sharded batch moves
  # nothing across devices), per stacked copy
  per_example = jax.vmap(lambda x, a: jnp.take(x, a, axis=0, mode="clip"))
  per_copy = jax.vmap(per_example, (0, None))

  def take(leaf):
    if leaf.ndim == 0:
      return leaf
    if leaf.shape[0] not in (rows, 2 * rows):
      raise ValueError(f"particles resample the decoder's carry by its leading axis, the "
                       f"{rows} particle rows; a carried array (a key-value cache?) has shape "
                       f"{list(leaf.shape)}: a denoiser's cache must lead with the batch")
    copies = leaf.reshape((leaf.shape[0] // rows, batch, num) + leaf.shape[1:])
    return per_copy(copies, ancestors).reshape(leaf.shape)   # in range: clip, not fill

  return jax.tree.map(take, tree)


def _stream_keys(example_keys, index, pass_index) -> jax.Array:
  """Key data `[B, ...]` of the resampling draw after step `index` of pass `pass_index` (the
  first pass draws as `Smc`; later passes fold in the pass)."""
  keys = jax.vmap(lambda k: jax.random.fold_in(jax.random.fold_in(k, RESAMPLE_STREAM),
                                               index))(example_keys)
  later = jax.vmap(lambda k: jax.random.fold_in(k, pass_index))(keys)
  return jnp.where(pass_index > 0, jax.random.key_data(later), jax.random.key_data(keys))


def _maybe_resample(method, draw_keys, example_keys, allowed, active, conditional, carry,
                    state: ParticleState):
  """Resamples the examples whose effective size is below `ess_threshold x num` (a
  threshold of 1: whose weights are not all equal), when `allowed` and the step changed the
  example's tokens (`active [B] bool`: a step past an example's answer, which a shorter
  batch would not run, never resamples it), gathering the decoder's carry and the layer's
  state; a resampled example's weights restart at 0. Under `conditional` (`[] bool`,
  particle Gibbs) particle 0 of each example, the reference, keeps its own row. Returns
  `(carry, state, ancestors [B, P] int32)`."""
  num = method.num
  log_w = state.log_w.reshape(-1, num)                                       # [B, P]
  size = effective_size(log_w)
  due = allowed & active & (size < num * min(method.ess_threshold, UNIFORM))  # [B]
  ancestors = jax.vmap(lambda k, w: resample(_wrap(k, example_keys), w, method.resampler))(
      draw_keys, log_w)
  ancestors = ancestors.at[:, 0].set(jnp.where(conditional, 0, ancestors[:, 0]))
  ancestors = jnp.where(due[:, None], ancestors, jnp.arange(num, dtype=jnp.int32))

  def gather():
    moved_carry, moved = gather_rows((carry, state), ancestors)
    restart = jnp.repeat(due, num)
    return moved_carry, moved._replace(
        log_w=jnp.where(restart, 0.0, moved.log_w),
        base=jnp.where(restart, moved.twist, moved.base),
        resampled=moved.resampled + restart)

  carry, state = jax.lax.cond(jnp.any(due), gather, lambda: (carry, state))
  return carry, state, ancestors


def _scores(method: Particles, tokens, state: ParticleState) -> jax.Array:
  """What `method.select` ranks, `[B, P]` (a NaN reward ranks lowest)."""
  if method.select == "reward":
    return reward_values(method.reward_fn, tokens).reshape(-1, method.num)
  if method.select == "confidence":
    return confidence(state).reshape(-1, method.num)
  return state.log_w.reshape(-1, method.num)


def _choose(select: str, example_keys, draw, scores) -> jax.Array:
  """The chosen particle `[B] int32`: the highest score, or a draw by the weights with the
  key `fold_in(fold_in(example key, CHOOSE_STREAM), draw)` (draw `k < passes` hands particle
  Gibbs' pass `k` on; draw `passes` picks the returned particle)."""
  if select != "weight":
    return jnp.argmax(scores, axis=-1).astype(jnp.int32)
  keys = jax.vmap(lambda k: jax.random.fold_in(jax.random.fold_in(k, CHOOSE_STREAM), draw))(
      example_keys)
  return jax.vmap(jax.random.categorical)(keys, scores).astype(jnp.int32)


def _committed(state: ParticleState, out) -> ParticleState:
  """`state` after a step or finish `out`: the committed tokens' log-probabilities where it
  unmasked, none where it remasked (unchanged when the decoder reports none)."""
  if out.logp is None:
    return state
  remask = getattr(out, "remask", jnp.zeros_like(out.unmask))
  return state._replace(
      logp=jnp.where(out.unmask, out.logp, jnp.where(remask, 0.0, state.logp)),
      decided=jnp.where(out.unmask, True, jnp.where(remask, False, state.decided)))


class _Pass(NamedTuple):
  """One (conditional) SMC pass over the decoder's scan."""

  finish: Finish              # the decoded rows
  state: ParticleState        # the weights and scores after the finish
  ancestors: jax.Array        # [n, B, P] int32, each step's resampling (identity: none)
  records: tuple | None       # each step's (z, unmask, remask[, predicted]), [n, B P, L]


def _start_state(rows: int, length: int) -> ParticleState:
  zeros = jnp.zeros((rows,), jnp.float32)
  return ParticleState(zeros, zeros, zeros, jnp.zeros((rows, length), jnp.float32),
                       jnp.zeros((rows, length), bool), jnp.int32(0),
                       jnp.zeros((rows,), jnp.int32))


def _smc_pass(method: Particles, scan: Scan, example_keys, row_keys, reference, pass_index,
              shape: RunShape) -> _Pass:
  """SMC over the decoder's steps. `row_keys [B P]` are the particles' keys; `reference` is
  None, or `(key data [n, B, ...], use [] bool)`: when `use`, particle 0 of each example takes
  the reference's step keys and is never replaced (conditional SMC, particle Gibbs)."""
  num, n_rows = method.num, row_keys.shape[0]
  steps = scan_indices(scan).shape[0]
  identity = jnp.broadcast_to(jnp.arange(num, dtype=jnp.int32), (n_rows // num, num))

  def body(both, indexed):
    (carry, state), (index, x) = both, indexed
    announce(shape, pass_index * steps + index)
    keys = row_step_keys(row_keys, index)
    conditional = jnp.bool_(False)
    if reference is not None:
      conditional = reference[1]
      own = jax.random.key_data(keys).reshape((n_rows // num, num) + reference[0].shape[2:])
      first = jnp.where(conditional, reference[0][index], own[:, 0])
      keys = _wrap(own.at[:, 0].set(first).reshape((n_rows,) + own.shape[2:]), row_keys)
    carry, out = scan.step(carry, x, keys)
    active = jnp.any((out.unmask | out.remask).reshape(n_rows // num, -1), axis=-1)
    log_w, twist = method.weigh(out, state)
    state = _committed(state, out)._replace(log_w=log_w, twist=twist,
                                            calls=state.calls + out.called.astype(jnp.int32))
    allowed = method.resamples_at(out, index)
    ancestors = identity
    if allowed is not None:
      carry, state, ancestors = _maybe_resample(
          method, _stream_keys(example_keys, index, pass_index), example_keys, allowed, active,
          conditional, carry, state)
    return (carry, state), (ancestors, record_of(out, shape))

  (carry, state), (ancestors, records) = jax.lax.scan(
      body, (scan.carry, _start_state(n_rows, shape.seq_len)), (scan_indices(scan), scan.xs))
  finish = scan.finish(carry)
  state = _committed(state, finish)._replace(
      log_w=method.weigh_finish(finish.tokens, finish.logp, state),
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
  """The step keys (key data, `[n, B, ...]`) the chosen particle's line of ancestors ran with
  (the reference's where the line's row was particle 0 of a conditional pass)."""
  ran = _lineage(ancestors, chosen)
  batch = chosen.shape[0]

  def at_step(index, rows):
    own = jax.random.key_data(row_step_keys(row_keys, index))
    own = own.reshape((batch, num) + own.shape[1:])
    mine = jnp.take_along_axis(own, rows.reshape((batch, 1) + (1,) * (own.ndim - 2)),
                               axis=1)[:, 0]
    use = ((rows == 0) & reference[1]).reshape((batch,) + (1,) * (mine.ndim - 1))
    return jnp.where(use, reference[0][index], mine)

  return jax.vmap(at_step)(jnp.arange(ran.shape[0], dtype=jnp.int32), ran)


def _pass_keys(keys, num: int, pass_index):
  """Particle keys of pass `pass_index` (`particle_keys` for the first pass)."""
  first = particle_keys(keys, num)
  later = jax.vmap(lambda k: jax.random.fold_in(jax.random.fold_in(k, PASS_STREAM),
                                                pass_index))(first)
  return _wrap(jnp.where(pass_index > 0, jax.random.key_data(later),
                         jax.random.key_data(first)), keys)


def _gibbs(method: Particles, scan: Scan, keys, shape: RunShape) -> tuple[_Pass, jax.Array]:
  """`method.passes` passes of conditional SMC; the last pass and the model calls of all."""
  num, batch = method.num, keys.shape[0]
  steps = scan_indices(scan).shape[0]

  def one_pass(reference, pass_index):
    row_keys = _pass_keys(keys, num, pass_index)
    done = _smc_pass(method, scan, keys, row_keys, reference, pass_index, shape)
    chosen = _choose("weight", keys, pass_index, done.state.log_w.reshape(batch, num))
    return (_lineage_keys(done.ancestors, chosen, row_keys, reference, num),
            jnp.bool_(True)), done

  empty = jnp.zeros((steps,) + jax.random.key_data(keys).shape, jnp.uint32)
  start = (empty, jnp.bool_(False))
  shapes = jax.eval_shape(lambda: one_pass(start, jnp.int32(0))[1])

  def body(carry, pass_index):
    reference, calls, _ = carry
    reference, done = one_pass(reference, pass_index)
    return (reference, calls + done.state.calls, done), None

  blank = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
  (_, calls, last), _ = jax.lax.scan(body, (start, jnp.int32(0), blank),
                                     jnp.arange(method.passes, dtype=jnp.int32))
  return last, calls


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
  needs = needs._replace(predicted=needs.predicted or shape.predictions)
  scan = decoder.start(denoiser, plan, prompt, rows_shape, needs)
  check_reports(decoder, scan, needs, particle_keys(keys, num), type(method).__name__)
  if method.passes == 1:
    last = _smc_pass(method, scan, keys, particle_keys(keys, num), None, 0, rows_shape)
    calls = last.state.calls
  else:
    last, calls = _gibbs(method, scan, keys, rows_shape)
  scores = _scores(method, last.finish.tokens, last.state)
  chosen = _choose(method.select, keys, method.passes, scores)
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
