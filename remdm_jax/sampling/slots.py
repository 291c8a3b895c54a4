"""Block decoding with every row at its own pace, its slot refilled from a queue of prompts
(continuous batching), in one compiled `lax.while_loop`.

The lockstep block decoder (`remdm_jax.sampling.blocks`) takes block `j`'s steps for the
whole batch together: a block costs as many model calls as its slowest row needs, and a row
that stopped at EOS idles until its batch ends. Here `B` slots each hold one prompt of an
`N`-prompt queue at its own step (`pointer`, among its blocks' steps). One loop step:

1. settles the slots, cheaply and without the model: a finished row is written to the
   outputs and its slot takes the queue's next prompt; a row with nothing left in its block
   (no mask, and no decoded token a later step of the block may remask) moves to its next
   block at once, applying the end-of-block EOS rule, as the lockstep decoder's skipped steps
   would;
2. runs one block-decoding step for every row at its own step (`blocks.make_block_step`
   with per-row indices): one model call serves every row's window. With a key-value cache
   the rows starting a block are prefilled and the others read their caches in the same step
   (`windows._Cached`: two calls when both kinds of row have work).

A prompt's tokens are those of decoding it alone in a batch of one with the lockstep decoder:
its key is `fold_in(key, index)` for its global index, step `s` of its decode draws from
`fold_in(that, s)`, and the steps it skips are the ones the lockstep decoder skips too. They
do not depend on the slot, the number of slots, the queue's order or the devices.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from remdm_jax.denoiser import check_output, ensure_denoiser
from remdm_jax.parallel.distributed import put_global
from remdm_jax.sampling.blocks import (BlockCarry, answer_start, block_geometry,
                                       make_block_step, num_blocks, per_row, stop_at_eos)
from remdm_jax.sampling.checks import as_typed_key, check_prompt
from remdm_jax.sampling.config import BlockConfig
from remdm_jax.sampling.decoder import Needs, RunShape
from remdm_jax.sampling.plan import build_plan
from remdm_jax.sampling.windows import make_window, rows
from remdm_jax.validation import ArgumentTypeError, check_range


class Queue(NamedTuple):
  """The prompts a run decodes, in the order the slots take them, and the run's key."""

  rows: jax.Array      # [N, L] int32: prompt templates (the mask id after each prompt)
  indices: jax.Array   # [N] int32: global example indices; prompt n draws from
                       # fold_in(key, indices[n])
  key: jax.Array       # [] typed key


class SlotState(NamedTuple):
  """The loop's state: `B` slots, the queue's progress and the decoded prompts."""

  carry: BlockCarry    # the slots' tokens, scores, block counts, flags and cache ([B, ...])
  start: jax.Array     # [B] int32: each slot's answer start
  pointer: jax.Array   # [B] int32: each slot's next step among its blocks' steps
  steps: jax.Array     # [B] int32: its steps in all (blocks x steps per block)
  prompt: jax.Array    # [B] int32: the queue position of its prompt; -1 when idle
  next: jax.Array      # [] int32: the queue's next position
  tokens: jax.Array    # [N, L] int32: decoded prompts (in queue order)
  nonfinite: jax.Array  # [N] bool: non-finite logits where a prompt drew a token
  done: jax.Array      # [N] bool: the prompt is decoded
  calls: jax.Array     # [] int32: model calls so far
  iterations: jax.Array  # [] int32: loop steps that ran the decoding step


class QueueResult(NamedTuple):
  """What `SlotDecoder.__call__` returns (host arrays, in the order of the given prompts)."""

  tokens: np.ndarray      # [N, L] int32
  nonfinite: np.ndarray   # [N] bool
  model_calls: int        # forward calls, each serving every slot with work
  iterations: int         # decoding steps of the loop


@dataclasses.dataclass(frozen=True)
class _Static:
  """The loop's static shape (hashable: part of the executable's signature)."""

  slots: int
  seq_len: int
  mask_id: int
  tail: int              # the longest answer of the queue, in rows (the prefix cache's)
  batch_sharding: jax.sharding.Sharding | None
  groups: int            # the slots' shards (a step prefills within each)


def _remask_possible(plan) -> tuple[jax.Array, jax.Array]:
  """Per step of a block (`[S] bool` each): the step may remask a decoded token (a
  ReMDM-LLaDA window step or a `remask_sigma` probability above 0), and some step from it to
  the block's end may."""
  now = (plan.table.remask > 0) | (plan.table.sigma > 0)
  later = jnp.flip(jnp.cumsum(jnp.flip(now.astype(jnp.int32))) > 0)
  return now, later


def _constrain(x, static: _Static):
  """A `[B, ...]` slot array placed like the batch (when it is sharded)."""
  if static.batch_sharding is None or x is None:
    return x
  return jax.lax.with_sharding_constraint(x, static.batch_sharding)


def _everywhere(sharding: jax.sharding.NamedSharding) -> jax.sharding.NamedSharding:
  """Replicated over the mesh of `sharding` (the queue and the outputs: every process reads
  them)."""
  return jax.sharding.NamedSharding(sharding.mesh, jax.sharding.PartitionSpec())


def _replicate(x, static: _Static):
  """An `[N, ...]` output array held in full by every device of the batch's mesh."""
  if not isinstance(static.batch_sharding, jax.sharding.NamedSharding):
    return x
  return jax.lax.with_sharding_constraint(x, _everywhere(static.batch_sharding))


def _placed(state: SlotState, static: _Static) -> SlotState:
  """Every leaf of the state placed as the loop keeps it (the slots split like the batch,
  the outputs and counters on every device), so a loop's output is the next loop's input."""
  if not isinstance(static.batch_sharding, jax.sharding.NamedSharding):
    return state
  slot_leaves = (state.carry, state.start, state.pointer, state.steps, state.prompt)
  slot_part = jax.tree.map(lambda a: _constrain(a, static), slot_leaves)
  rest = jax.tree.map(lambda a: _replicate(a, static),
                      (state.next, state.tokens, state.nonfinite, state.done, state.calls,
                       state.iterations))
  return SlotState(*slot_part, *rest)


def _finish_rows(state: SlotState, static: _Static) -> tuple[SlotState, jax.Array]:
  """Rows past their last step are written to the outputs and their slots freed; returns the
  state and whether any was."""
  finished = (state.prompt >= 0) & (state.pointer >= state.steps)
  at = jnp.where(finished, state.prompt, state.tokens.shape[0])   # out of range: dropped
  state = state._replace(
      tokens=_replicate(state.tokens.at[at].set(state.carry.z, mode="drop"), static),
      nonfinite=_replicate(state.nonfinite.at[at].set(state.carry.nonfinite, mode="drop"),
                           static),
      done=_replicate(state.done.at[at].set(True, mode="drop"), static),
      prompt=jnp.where(finished, -1, state.prompt))
  return state, jnp.any(finished)


def _refill(state: SlotState, queue: Queue, rule, static: _Static,
            steps_per_block: int) -> tuple[SlotState, jax.Array]:
  """Idle slots take the queue's next prompts, in slot order; returns the state and whether
  any did."""
  idle = state.prompt < 0
  position = state.next + jnp.cumsum(idle.astype(jnp.int32)) - 1
  take = idle & (position < queue.rows.shape[0])
  fresh = queue.rows[jnp.clip(position, 0, queue.rows.shape[0] - 1)]      # [B, L]
  start = answer_start(fresh, static.mask_id)
  blocks = jnp.maximum(1, -(-(static.seq_len - start) // rule.block_length))
  column = per_row(take)
  carry = state.carry._replace(
      z=jnp.where(column, fresh, state.carry.z),
      track=jnp.where(column, jnp.inf, state.carry.track),
      nonfinite=jnp.where(take, False, state.carry.nonfinite))
  state = state._replace(
      carry=carry, start=jnp.where(take, start, state.start),
      pointer=jnp.where(take, 0, state.pointer),
      steps=jnp.where(take, blocks * steps_per_block, state.steps),
      prompt=jnp.where(take, position, state.prompt),
      next=state.next + jnp.sum(take, dtype=jnp.int32))
  return state, jnp.any(take)


def _skip_idle_steps(state: SlotState, plan, static: _Static,
                     steps_per_block: int) -> tuple[SlotState, jax.Array]:
  """Rows whose current step has no work move on without the model: to the next block when
  nothing in theirs can change (no mask, and no decoded token a later step may remask), one
  step when only a later step may remask. Returns the state and whether any row moved."""
  rule = plan.rule
  now, later = _remask_possible(plan)
  z, track = state.carry.z, state.carry.track
  within, block = state.pointer % steps_per_block, state.pointer // steps_per_block
  geometry = block_geometry(state.start, block, rule.block_length, static.seq_len)
  z_w, track_w = rows(z, geometry.positions), rows(track, geometry.positions)
  masks = jnp.any(geometry.valid & (z_w == static.mask_id), axis=-1)
  decoded = jnp.any(geometry.valid & (z_w != static.mask_id) & jnp.isfinite(track_w), axis=-1)
  quiet = (state.prompt >= 0) & (state.pointer < state.steps) & ~masks
  leave = quiet & (~decoded | ~later[within])
  wait = quiet & decoded & later[within] & ~now[within]
  if rule.eos_id >= 0:
    z = jnp.where(per_row(leave), stop_at_eos(z, state.start, rule.eos_id), z)
  pointer = jnp.where(leave, (block + 1) * steps_per_block,
                      jnp.where(wait, state.pointer + 1, state.pointer))
  return (state._replace(carry=state.carry._replace(z=z), pointer=pointer),
          jnp.any(leave | wait))


def _settle(state: SlotState, queue: Queue, plan, static: _Static,
            steps_per_block: int) -> SlotState:
  """Finishes, refills and moves rows on until every busy slot's step has work (or may: a
  `remask_sigma` draw) and no idle slot can take a prompt."""
  def body(loop):
    state, _ = loop
    state, finished = _finish_rows(state, static)
    state, taken = _refill(state, queue, plan.rule, static, steps_per_block)
    state, moved = _skip_idle_steps(state, plan, static, steps_per_block)
    return state, finished | taken | moved

  return jax.lax.while_loop(lambda loop: loop[1], body, (state, jnp.bool_(True)))[0]


def _decode_step(state: SlotState, queue: Queue, denoiser, plan, static: _Static,
                 steps_per_block: int) -> SlotState:
  """One block-decoding step of every busy slot, each at its own step."""
  rule, busy = plan.rule, state.prompt >= 0
  prompt_rows = queue.rows[jnp.maximum(state.prompt, 0)]
  model = make_window(denoiser, rule, plan, prompt_rows != static.mask_id, static.seq_len,
                      static.mask_id, static.tail, static.groups)
  step = make_block_step(model, plan, rule, state.start, static.seq_len, static.mask_id,
                         steps_per_block, Needs())
  within = state.pointer % steps_per_block
  block = jnp.where(busy, state.pointer // steps_per_block, static.seq_len)  # idle: past L
  row = jax.tree.map(lambda a: a[within], plan.table)
  rows_keys = jax.vmap(lambda i: jax.random.fold_in(queue.key, i))(
      queue.indices[jnp.maximum(state.prompt, 0)])
  keys = jax.vmap(jax.random.fold_in)(rows_keys, state.pointer)
  carry, out = step(state.carry, (state.pointer, block, row), keys)
  carry = carry._replace(z=_constrain(carry.z, static))
  return state._replace(carry=carry, pointer=jnp.where(busy, state.pointer + 1, state.pointer),
                        calls=state.calls + out.called.astype(jnp.int32),
                        iterations=state.iterations + jnp.any(busy).astype(jnp.int32))


def _advance(state: SlotState, queue: Queue, denoiser, plan, until, *, static: _Static):
  """Runs the loop until every prompt is decoded or `until` decoding steps have run."""
  steps_per_block = plan.table.t.shape[0]

  def unfinished(state):
    return (jnp.any(state.prompt >= 0) | (state.next < queue.rows.shape[0])) & (
        state.iterations < until)

  def body(state):   # after the last prompt the step finds no row with work: no call
    state = _settle(state, queue, plan, static, steps_per_block)
    return _decode_step(state, queue, denoiser, plan, static, steps_per_block)

  return _placed(jax.lax.while_loop(unfinished, body, _placed(state, static)), static)


def _initial(queue: Queue, denoiser, plan, *, static: _Static) -> SlotState:
  """Every slot idle, nothing decoded."""
  b, n = static.slots, queue.rows.shape[0]
  z = _constrain(jnp.full((b, static.seq_len), static.mask_id, jnp.int32), static)
  model = make_window(denoiser, plan.rule, plan, z != static.mask_id, static.seq_len,
                      static.mask_id, static.tail)
  cache = jax.tree.map(lambda a: _constrain(a, static), model.init_cache(z))
  zeros = jnp.zeros((b,), jnp.int32)
  carry = BlockCarry(z, jnp.full(z.shape, jnp.inf, jnp.float32), zeros,
                     jnp.zeros((b,), bool), cache)
  outputs = [_replicate(jnp.zeros(shape, dtype), static)
             for shape, dtype in (((n, static.seq_len), jnp.int32), ((n,), bool), ((n,), bool))]
  return _placed(SlotState(carry, zeros, zeros, zeros, jnp.full((b,), -1, jnp.int32),
                           jnp.int32(0), *outputs, jnp.int32(0), jnp.int32(0)), static)


_jitted_initial = jax.jit(_initial, static_argnames=("static",))
_jitted_advance = jax.jit(_advance, static_argnames=("static",), donate_argnums=(0,))


class SlotDecoder:
  """Block decoding of a queue of prompts in `slots` rows, each at its own pace
  (`make_slot_decoder`)."""

  def __init__(self, denoiser, config: BlockConfig, *, slots: int, seq_len: int,
               mask_id: int, batch_sharding=None):
    if not isinstance(config, BlockConfig):
      raise ArgumentTypeError(f"config must be a BlockConfig (strategy 'llada'): slots decode "
                              f"blocks, got {type(config).__name__}")
    check_range("slots", slots, 1)
    check_range("seq_len", seq_len, 1)
    self.denoiser = ensure_denoiser(denoiser)
    self.plan, self.rule = build_plan(config)
    self.shape = RunShape(slots, seq_len, mask_id, batch_sharding)
    self.rule.check_call(self.denoiser, self.shape)
    if batch_sharding is not None and slots % len(batch_sharding.device_set) != 0:
      raise ValueError(f"slots must be a multiple of the {len(batch_sharding.device_set)} "
                       f"devices the batch is split over, got {slots}")
    self.slots, self.seq_len, self.mask_id = slots, seq_len, mask_id
    self.batch_sharding = batch_sharding
    self._vocab_size = None
    self._compiled = {}   # (static shape, queue shape) -> (initial, advance), compiled

  @property
  def steps_per_block(self) -> int:
    """Steps of one block (regular and remasking steps)."""
    return int(self.plan.table.t.shape[0])

  def check(self, prompts, indices=None) -> tuple[np.ndarray, np.ndarray, int]:
    """`(prompts [N, L] int32, indices [N] int32, the longest answer in rows: the prefix
    cache's widest window, else L)`, checked.

    Raises:
      ValueError: prompts not `[N, seq_len]` integer templates with ids in `[0, V)` and no
        mask before a row's last prompt id; indices not `[N]` in `[0, 2**31 - 1)`.
    """
    prompts = np.asarray(prompts)
    if prompts.ndim != 2 or prompts.shape[1] != self.seq_len or prompts.shape[0] < 1:
      raise ValueError(f"prompts must have shape [N, seq_len] = [N, {self.seq_len}] with "
                       f"N >= 1, got {list(prompts.shape)}")
    if self._vocab_size is None:
      self._vocab_size = check_output(self.denoiser, self.slots, self.seq_len, self.mask_id)
      self.rule.check_vocab(self._vocab_size)
    prompts = np.asarray(check_prompt(prompts, len(prompts), self.seq_len, self._vocab_size))
    blocks = num_blocks(self.rule, prompts, self.seq_len, self.mask_id)
    indices = (np.arange(len(prompts)) if indices is None
               else np.asarray(indices, np.int64).reshape(-1))
    if indices.shape != (len(prompts),) or (indices < 0).any() or (
        indices >= np.iinfo(np.int32).max).any():
      raise ValueError(f"indices must be [N] = [{len(prompts)}] global example indices in "
                       f"[0, 2**31 - 1), got shape {list(indices.shape)}")
    tail = (min(self.seq_len, blocks * self.rule.block_length)
            if self.rule.kv_cache == "prefix" else self.seq_len)   # only its windows use it
    return prompts.astype(np.int32), indices.astype(np.int32), tail

  def _replicated(self, host: np.ndarray) -> jax.Array:
    """A host array every process holds, on every device of the batch's mesh."""
    if not isinstance(self.batch_sharding, jax.sharding.NamedSharding):
      return jnp.asarray(host)
    return put_global(host, _everywhere(self.batch_sharding))

  def _inputs(self, key, prompts, indices, params) -> tuple[Queue, object, _Static]:
    """The checked queue, the denoiser with `params` and the loop's static shape."""
    prompts, indices, tail = self.check(prompts, indices)
    queue = Queue(self._replicated(prompts), self._replicated(indices), as_typed_key(key))
    denoiser = self.denoiser if params is None else self.denoiser.with_params(params)
    groups = (1 if self.batch_sharding is None else
              self.slots // self.batch_sharding.shard_shape((self.slots, self.seq_len))[0])
    return queue, denoiser, _Static(self.slots, self.seq_len, self.mask_id, tail,
                                    self.batch_sharding, groups)

  def _executables(self, static: _Static, queue: Queue):
    """`(initial, advance)`: the compiled ones of `compile` when they fit this queue's shape,
    else the jitted functions."""
    if (static, queue.rows.shape) in self._compiled:
      return self._compiled[static, queue.rows.shape]
    return (functools.partial(_jitted_initial, static=static),
            functools.partial(_jitted_advance, static=static))

  def compile(self, key, prompts, indices=None, *, params=None) -> "SlotDecoder":
    """Compiles the loop for a queue of this shape now (before a job times or writes
    anything); later calls with as many prompts and the same longest answer reuse it."""
    queue, denoiser, static = self._inputs(key, prompts, indices, params)
    initial = _jitted_initial.lower(queue, denoiser, self.plan, static=static).compile()
    state = initial(queue, denoiser, self.plan)
    advance = _jitted_advance.lower(state, queue, denoiser, self.plan, jnp.int32(0),
                                    static=static).compile()
    self._compiled[static, queue.rows.shape] = initial, advance
    return self

  def __call__(self, key, prompts, indices=None, *, params=None, sync_every: int = 0,
               on_sync: Callable[[np.ndarray, np.ndarray, np.ndarray], None] | None = None
               ) -> QueueResult:
    """Decodes every prompt of `prompts [N, L]` (templates: ids, then the mask id).

    Args:
      key: the run's key; prompt `n` draws from `fold_in(key, indices[n])`.
      prompts: `[N, L]` integer templates, each a prompt then masks.
      indices: `[N]` global example indices (default `0..N-1`): a prompt's tokens depend on
        its index, not on its place in the queue.
      params: the denoiser's parameters (None: its own).
      sync_every: decoding steps between host synchronisations (0: none until the end);
        at each, `on_sync(queue positions [n] int64, tokens [n, L] int32, nonfinite [n]
        bool)` receives the prompts decoded since the last one.

    Returns:
      A `QueueResult`.
    """
    check_range("sync_every", sync_every, 0)
    queue, denoiser, static = self._inputs(key, prompts, indices, params)
    initial, advance = self._executables(static, queue)
    state = initial(queue, denoiser, self.plan)
    reported = np.zeros(len(queue.rows), bool)
    limit = np.iinfo(np.int32).max
    while True:
      until = min(int(_host(state.iterations)) + sync_every, limit) if sync_every else limit
      state = advance(state, queue, denoiser, self.plan, jnp.int32(until))
      done = _host(state.done)
      if on_sync is not None and (done & ~reported).any():
        new = np.flatnonzero(done & ~reported)
        on_sync(new, _host(state.tokens)[new], _host(state.nonfinite)[new])
      reported = done
      if done.all():
        break
    return QueueResult(_host(state.tokens), _host(state.nonfinite), int(_host(state.calls)),
                       int(_host(state.iterations)))


def _host(x: jax.Array) -> np.ndarray:
  """A replicated array on this host (this process's copy)."""
  return np.asarray(x if x.is_fully_addressable else x.addressable_data(0))


def make_slot_decoder(denoiser, config: BlockConfig, *, slots: int, seq_len: int,
                      mask_id: int, batch_sharding=None) -> SlotDecoder:
  """A decoder of prompt queues with `config`'s block decoding, `slots` rows at a time, each
  at its own pace (continuous batching); see the module docstring.

  Raises:
    ArgumentTypeError: a config other than a `BlockConfig`. ValueError: bad sizes, or slots
      that do not divide over the batch's devices.

  Examples:
    >>> import jax, jax.numpy as jnp, numpy as np, remdm_jax
    >>> logits = lambda z, t: jnp.zeros(z.shape + (5,), jnp.float32).at[..., 1].set(1.0)
    >>> cfg = remdm_jax.sampler_config("llada", num_steps=2, block_length=2)
    >>> run = remdm_jax.make_slot_decoder(logits, cfg, slots=2, seq_len=6, mask_id=4)
    >>> prompts = np.array([[0, 4, 4, 4, 4, 4], [0, 2, 3, 4, 4, 4], [0, 2, 4, 4, 4, 4]])
    >>> out = run(jax.random.key(0), prompts)
    >>> out.tokens[1].tolist(), out.model_calls
    ([0, 2, 3, 1, 1, 1], 7)
  """
  return SlotDecoder(denoiser, config, slots=slots, seq_len=seq_len, mask_id=mask_id,
                     batch_sharding=batch_sharding)
