"""How a block-decoding step obtains the logits of its block: three window types.

- `Uncached`: the model on every row, the logits read at the block (LLaDA's `generate`).
- `PrefixCache`: a block's first step runs every row and keeps every position's keys and
  values; its later steps run the rows from the block on (in static widths, `prefix_widths`),
  earlier positions reading the cache (Fast-dLLM's `generate_with_prefix_cache`).
- `DualCache`: the same first step; the later steps run the block alone, every other position
  reading the cache (Fast-dLLM's `generate_with_dual_cache`).

A step's `first_step` is one flag for the batch (all rows take a block's steps together) or
one per row (`remdm_jax.sampling.slots`: every row at its own step): then the rows starting a
block are prefilled while the others reuse their caches, in the same step.

The window is picked once per run (`make_window`), outside the scan's step. Classifier-free
guidance stacks the unconditional rows (the prompt masked) after the conditional ones
(`Guide`). A denoiser whose row `p - 1` predicts position `p` (`Denoiser.shift`) has the
row before each block run too, since the block's first position needs it.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp


class Geometry(NamedTuple):
  """Where block `j` lies for each example."""

  first: jax.Array       # [B] int32, P_b + jK (may be >= L: the block is empty)
  positions: jax.Array   # [B, K] int32, P_b + jK + k, clipped to L - 1
  valid: jax.Array       # [B, K] bool, the unclipped position is < L


def rows(x: jax.Array, positions: jax.Array) -> jax.Array:
  """`x [B, L, ...]` at `positions [B, K]` -> `[B, K, ...]`."""
  index = positions.reshape(positions.shape + (1,) * (x.ndim - 2))
  return jnp.take_along_axis(x, index, axis=1)


@dataclasses.dataclass(frozen=True)
class Guide:
  """Classifier-free guidance of the block's logits (or none): the model sees `z` and, when
  `cfg_scale` is used, `z` with the prompt (`fixed [B, L] bool`) masked, stacked after it;
  the logits are combined as `un + (s + 1)(cond - un)`."""

  use_cfg: bool
  fixed: jax.Array
  mask_id: int
  cfg_scale: jax.Array

  def inputs(self, z: jax.Array) -> jax.Array:
    """`[B, L]`, or `[2B, L]` under guidance."""
    if not self.use_cfg:
      return z
    return jnp.concatenate([z, jnp.where(self.fixed, self.mask_id, z)])

  def twice(self, x: jax.Array) -> jax.Array:
    """A per-example array for the stacked rows."""
    return jnp.concatenate([x, x]) if self.use_cfg else x

  def combine(self, logits: jax.Array) -> jax.Array:
    """`[B, K, V]` from the stacked logits."""
    if not self.use_cfg:
      return logits
    cond, uncond = jnp.split(logits, 2)
    return uncond + (self.cfg_scale + 1.0) * (cond - uncond)


def _head_at(denoiser, h: jax.Array, positions: jax.Array, t=None) -> jax.Array:
  """Logits `[B, K, V] float32` of `positions [B, K]` from the trunk's rows `h [B, L, D]` (the
  rows that predict them, `Denoiser.feature_rows`), at times `t` (None: a time-free head)."""
  return denoiser.head(rows(h, denoiser.feature_rows(positions)), t).astype(jnp.float32)


@dataclasses.dataclass(frozen=True)
class Uncached:
  """The model on every row at every step."""

  denoiser: object
  guide: Guide
  mask_id: int

  def init_cache(self, z: jax.Array):
    return None

  def calls(self, first_step, working: jax.Array) -> jax.Array:
    """The model calls of a step whose rows with work are `working [B] bool`: one when any
    has work (`[] bool`)."""
    del first_step
    return jnp.any(working)

  def logits(self, z, geometry: Geometry, first_step, cache, working=None):
    """`(logits [B, K, V] float32, cache)` of the block."""
    seqs = self.guide.inputs(z)
    t = jnp.maximum(jnp.mean((seqs == self.mask_id).astype(jnp.float32), axis=1), 1e-5)
    positions = self.guide.twice(geometry.positions)
    if self.denoiser.is_split:
      out = _head_at(self.denoiser, self.denoiser.features(seqs, t), positions, t)
    else:
      out = rows(self.denoiser(seqs, t), positions).astype(jnp.float32)
    return self.guide.combine(out), cache


def bucket_sizes(rows_: int) -> tuple[int, ...]:
  """The static row counts a per-row step prefills: `1, 2, 4, ...` below `rows_`, then
  `rows_` (a step runs the smallest that holds its rows starting a block)."""
  sizes, size = [], 1
  while size < rows_:
    sizes.append(size)
    size *= 2
  return tuple(sizes) + (rows_,)


def _grouped(x: jax.Array, groups: int) -> jax.Array:
  """`[G n, ...] -> [G, n, ...]`."""
  return x.reshape((groups, -1) + x.shape[1:])


def _ungrouped(x: jax.Array) -> jax.Array:
  """`[G, n, ...] -> [G n, ...]`."""
  return x.reshape((-1,) + x.shape[2:])


@dataclasses.dataclass(frozen=True)
class _Cached:
  """A block's first step runs every row and keeps the cache; the later steps `reuse` it.

  With one `first_step` flag per row, a step prefills only the rows starting a block: within
  each of `groups` equal groups of rows (the batch's shards, so no row leaves its device)
  they are gathered into the smallest of `bucket_sizes` that holds them, prefilled, and
  their logits and caches scattered back, while the other rows read their caches."""

  denoiser: object
  guide: Guide
  seq_len: int
  block_length: int
  tail: int          # the longest answer, in rows (static)
  groups: int = 1    # row groups a per-row step compacts within (the batch's shards)

  def init_cache(self, z: jax.Array):
    shape = jax.eval_shape(lambda s: self.denoiser.prefill(s)[1], self.guide.inputs(z))
    return jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), shape)

  def fuses_prefill(self) -> bool:
    """Whether a step's prefill and cached rows run in one model call."""
    return False

  def calls(self, first_step, working: jax.Array) -> jax.Array:
    """The model calls of a step whose rows with work are `working [B] bool`: one (`[] bool`)
    under one `first_step` flag; per row, one for the rows starting a block (the prefill)
    plus one for the others (`[] int32`, 0 to 2), or one for both when fused."""
    if jnp.ndim(first_step) == 0:
      return jnp.any(working)
    prefill, cached = jnp.any(working & first_step), jnp.any(working & ~first_step)
    if self.fuses_prefill():
      return (prefill | cached).astype(jnp.int32)
    return prefill.astype(jnp.int32) + cached.astype(jnp.int32)

  def logits(self, z, geometry: Geometry, first_step, cache, working=None):
    """`(logits [B, K, V] float32, cache)` of the block: prefilled at its first step (every
    row, or the `working` rows whose `first_step [B]` is set), else from the cache."""
    seqs = self.guide.inputs(z)
    positions = self.guide.twice(geometry.positions)
    if jnp.ndim(first_step) == 0:
      def prefill():
        h, fresh_cache = self.denoiser.prefill(seqs)
        return _head_at(self.denoiser, h, positions), fresh_cache

      out, cache = jax.lax.cond(first_step, prefill,
                                lambda: (self.reuse(seqs, geometry, cache), cache))
    else:
      first, working = self.guide.twice(first_step), self.guide.twice(working)
      out, cache = self._per_row(seqs, geometry, positions, cache, first & working,
                                 working & ~first)
    return self.guide.combine(out), cache

  def _per_row(self, seqs, geometry: Geometry, positions, cache, starting, continuing):
    """Logits and cache of a step whose `starting [B] bool` rows are prefilled and whose
    `continuing [B] bool` rows read their caches (each call runs only when needed)."""
    total = seqs.shape[0]
    groups = self.groups if total % self.groups == 0 else 1
    sizes = bucket_sizes(total // groups)
    most = jnp.max(jnp.sum(_grouped(starting, groups), axis=1))
    branch = jnp.where(most == 0, 0, 1 + jnp.searchsorted(jnp.asarray(sizes), most))

    def reuse():
      return self.reuse(seqs, geometry, cache), cache

    def prefilled(size: int):
      def run():
        local = jax.vmap(lambda row: jnp.nonzero(row, size=size, fill_value=row.shape[0])[0])(
            _grouped(starting, groups))                                   # [G, size]
        gather = lambda x: _ungrouped(jax.vmap(lambda a, i: a[jnp.minimum(i, a.shape[0] - 1)])(
            _grouped(x, groups), local))
        (h, fresh), window = self._prefill_with_window(gather(seqs), seqs, geometry, cache,
                                                       jnp.any(continuing))
        scatter = lambda base, new: _ungrouped(jax.vmap(
            lambda a, i, b: a.at[i].set(b, mode="drop"))(
                _grouped(base, groups), local, _grouped(new, groups)))
        logits = _head_at(self.denoiser, h, gather(positions))
        return scatter(window, logits), jax.tree.map(scatter, cache, fresh)
      return run

    return jax.lax.switch(branch, [reuse] + [prefilled(size) for size in sizes])

  def _prefill_with_window(self, z_p, seqs, geometry: Geometry, cache, window_needed):
    """`((h_p, cache_p), window logits [B, K, V] float32)`: the prefill of the rows `z_p
    [R, L]` and, when `window_needed`, `reuse` of every row (zeros otherwise): two calls."""
    window = lambda: self.reuse(seqs, geometry, cache)
    shape = jax.eval_shape(window)
    return self.denoiser.prefill(z_p), jax.lax.cond(
        window_needed, window, lambda: jnp.zeros(shape.shape, shape.dtype))


@dataclasses.dataclass(frozen=True)
class DualCache(_Cached):
  """Later steps run the block's rows (and the row before it, for a shifted denoiser). A
  per-row step whose denoiser fuses the two calls (`Denoiser.fuses_prefill`) prefills its
  starting rows and runs every row's window in one call."""

  def fuses_prefill(self) -> bool:
    return self.denoiser.fuses_prefill

  def _window(self, seqs, geometry: Geometry):
    """The window rows' `(ids [B, K + shift], positions, fresh)`."""
    shift = self.denoiser.shift
    first = self.guide.twice(geometry.first)
    window = first[:, None] - shift + jnp.arange(self.block_length + shift,
                                                 dtype=jnp.int32)[None]   # [B, K + shift]
    at = jnp.clip(window, 0, self.seq_len - 1)
    fresh = (window >= first[:, None]) & (window < self.seq_len)   # the block's own rows
    return rows(seqs, at), at, fresh

  def _window_logits(self, h: jax.Array) -> jax.Array:
    """`h [B, K + shift, D]` -> the block's logits: position first + k is predicted by
    window row k (row first + k - shift)."""
    return self.denoiser.head(h[:, :self.block_length], None).astype(jnp.float32)

  def reuse(self, seqs, geometry: Geometry, cache) -> jax.Array:
    return self._window_logits(self.denoiser.cached(*self._window(seqs, geometry), cache))

  def _prefill_with_window(self, z_p, seqs, geometry: Geometry, cache, window_needed):
    """Fused when the window is needed; else the prefill alone (the call a lockstep step
    makes, so a row decoded alone rounds as there)."""
    if not self.fuses_prefill():
      return super()._prefill_with_window(z_p, seqs, geometry, cache, window_needed)

    def fused():
      prefilled, h = self.denoiser.prefill_and_cached(z_p, *self._window(seqs, geometry),
                                                      cache)
      return prefilled, self._window_logits(h)

    shape = jax.eval_shape(lambda: self.reuse(seqs, geometry, cache))
    return jax.lax.cond(window_needed, fused, lambda: (
        self.denoiser.prefill(z_p), jnp.zeros(shape.shape, shape.dtype)))


MAX_PREFIX_WIDTHS = 16   # compiled window widths of the prefix cache, at most


def prefix_widths(tail: int, block_length: int) -> tuple[int, ...]:
  """The static row counts of the prefix cache's later steps: every multiple of `K` below
  `tail` (the longest answer), then `tail`, as Fast-dLLM's window shrinks block by block; for
  answers of more than `MAX_PREFIX_WIDTHS` blocks, every multiple of `K * ceil(blocks / 16)`
  (one compiled model call per width). A step runs the smallest that reaches back to the
  batch's earliest block start."""
  step = block_length * max(1, -(-tail // (block_length * MAX_PREFIX_WIDTHS)))
  return tuple(range(step, tail, step)) + (tail,)


@dataclasses.dataclass(frozen=True)
class PrefixCache(_Cached):
  """Later steps run the last rows, from the batch's earliest block (less the shift) on."""

  def reuse(self, seqs, geometry: Geometry, cache) -> jax.Array:
    shift = self.denoiser.shift
    widths = prefix_widths(min(self.tail + shift, self.seq_len), self.block_length)
    block_first = self.guide.twice(geometry.first)
    needed = self.seq_len - jnp.min(block_first) + shift     # rows from the earliest block on
    index = jnp.minimum(jnp.searchsorted(jnp.asarray(widths), needed), len(widths) - 1)
    branches = [functools.partial(self._rows_from, width=w) for w in widths]
    return jax.lax.switch(index, branches, seqs, self.guide.twice(geometry.positions),
                          block_first, cache)

  def _rows_from(self, seqs, positions, block_first, cache, *, width: int):
    """The last `width` rows run, those from each row's block on with their own keys and
    values, the earlier ones reading the cache."""
    first = self.seq_len - width
    at = jnp.broadcast_to(first + jnp.arange(width, dtype=jnp.int32), (seqs.shape[0], width))
    h = self.denoiser.cached(seqs[:, first:], at, at >= block_first[:, None], cache)
    needed = jnp.clip(self.denoiser.feature_rows(positions) - first, 0, width - 1)
    return self.denoiser.head(rows(h, needed), None).astype(jnp.float32)


def make_window(denoiser, rule, plan, fixed, seq_len: int, mask_id: int, tail: int,
                groups: int = 1):
  """The window of a run, picked once: `rule.kv_cache` when the denoiser has the cache
  contract (else uncached), under `rule.use_cfg`'s guidance; `fixed [B, L] bool` marks the
  prompt, `tail` is the longest answer (rows, static), `groups` the batch's shards (a
  per-row step prefills within each)."""
  guide = Guide(rule.use_cfg, fixed, mask_id, plan.cfg_scale)
  if rule.kv_cache == "none" or not denoiser.has_kv_cache:
    return Uncached(denoiser, guide, mask_id)
  kind = {"prefix": PrefixCache, "dual": DualCache}[rule.kv_cache]
  return kind(denoiser, guide, seq_len, rule.block_length, tail, groups)
