"""Nucleus (top-p) filtering of probability vectors, two semantics and three implementations.

Semantics:

- `reference`: keep the tokens whose sorted cumulative probability is `<= p`, plus always the
  top token (the ReMDM/MDLM reference code, kuleshov-group/remdm); the token that crosses `p`
  is dropped.
- `standard`: keep the minimal set whose mass is `>= p` (Holtzman et al. 2020, Hugging Face).

Implementations:

- `sort`: a full descending sort and cumulative sum per row.
- `bisect`: no sort. Non-negative float32 values are ordered like their int32 bit patterns,
  so a bisection over bit patterns finds the exact keep threshold in 31 masked sums.
- `radix`: the same threshold, 8 bits at a time: 4 passes, each a 256-bin histogram of the
  mass per digit of the bit pattern (within the bucket chosen so far).

At ties: `sort` keeps every token tied with its smallest kept value (the sort order of ties is
arbitrary); `bisect` and `radix` decide by the mass of all tokens >= a value, so a tie group
is kept or dropped whole. They differ only where a tie group crosses p in `reference` mode
(sort keeps the group, bisect/radix drop it).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from remdm_jax.validation import check_scalar

TOP_P_MODES = ("reference", "standard")
TOP_P_IMPLS = ("sort", "bisect", "radix")
DEFAULT_IMPL = "bisect"   # the sampler's default too (SamplerConfig.top_p_impl)

_ONE_BITS = 0x3F800000  # bit pattern of float32 1.0; probabilities lie in [0, ONE_BITS]


def _threshold_by_sort(probs: jax.Array, top_p: jax.Array, mode: str) -> jax.Array:
  """Smallest kept probability per row; `[..., V] f32 -> [..., 1] f32`."""
  sorted_desc = -jnp.sort(-probs, axis=-1)                  # [..., V]
  cum = jnp.cumsum(sorted_desc, axis=-1)                    # [..., V]
  if mode == "reference":
    kept = cum <= top_p
  else:
    kept = (cum - sorted_desc) < top_p
  kept = kept.at[..., 0].set(True)
  return jnp.min(jnp.where(kept, sorted_desc, jnp.inf), axis=-1, keepdims=True)


def _mass_at_or_above(probs: jax.Array, bits: jax.Array) -> jax.Array:
  """Mass of `probs >= float(bits)` per row; bits `[..., 1] int32`."""
  threshold = jax.lax.bitcast_convert_type(bits, jnp.float32)
  return jnp.sum(jnp.where(probs >= threshold, probs, 0.0), axis=-1, keepdims=True)


def _threshold_by_bisect(probs: jax.Array, top_p: jax.Array, mode: str) -> jax.Array:
  """Same threshold as `_threshold_by_sort`, found by bisection on bit patterns.

  `mass(tau) = sum(p_i for p_i >= tau)` decreases with `tau`. The reference set is
  `{i: mass(p_i) <= p}`: its threshold is the smallest tau with `mass(tau) <= p`. The standard
  set's threshold is the largest tau with `mass(tau) >= p`.
  """
  batch_shape = probs.shape[:-1] + (1,)
  lo = jnp.zeros(batch_shape, jnp.int32)
  hi = jnp.full(batch_shape, _ONE_BITS + 1, jnp.int32)

  def body(_, bounds):
    lo, hi = bounds
    mid = lo + (hi - lo) // 2
    mass = _mass_at_or_above(probs, mid)
    if mode == "reference":     # invariant: mass(lo) > p >= mass(hi)
      go_up = mass > top_p
    else:                       # invariant: mass(lo) >= p > mass(hi)
      go_up = mass >= top_p
    return jnp.where(go_up, mid, lo), jnp.where(go_up, hi, mid)

  lo, hi = jax.lax.fori_loop(0, 31, body, (lo, hi))
  bits = hi if mode == "reference" else lo
  threshold = jax.lax.bitcast_convert_type(bits, jnp.float32)
  return jnp.minimum(threshold, jnp.max(probs, axis=-1, keepdims=True))


_DIGIT_BITS = 8
_DIGITS = 1 << _DIGIT_BITS
_HIST_CHUNK = 512   # elements summed in sequence per histogram bin; chunks are added as a tree


def _threshold_by_radix(probs: jax.Array, top_p: jax.Array, mode: str) -> jax.Array:
  """Same threshold as `_threshold_by_bisect`: the largest bit pattern `b` with `mass(b) >= p`
  (standard) or `mass(b) > p` (reference, whose threshold is then `b + 1`), found one 8-bit
  digit at a time from the top. Each pass sums the mass of the bucket's elements per next
  digit (`[rows, 256]`); `mass(prefix | d) = above + sum(hist[d:])` decreases with `d`, so
  the digit is the count of digits that satisfy the condition, minus one."""
  vocab = probs.shape[-1]
  flat = probs.reshape(-1, vocab)                                       # [R, V] f32
  rows = flat.shape[0]
  chunks = -(-vocab // _HIST_CHUNK)
  flat = jnp.pad(flat, ((0, 0), (0, chunks * _HIST_CHUNK - vocab)))     # zeros add nothing
  bits = jax.lax.bitcast_convert_type(flat, jnp.int32)                  # [R, V'], >= 0
  # one segment per (row, chunk, digit): a bin sums at most _HIST_CHUNK values in sequence
  chunk_of = jnp.arange(chunks * _HIST_CHUNK, dtype=jnp.int32) // _HIST_CHUNK
  segment_base = ((jnp.arange(rows, dtype=jnp.int32)[:, None] * chunks + chunk_of[None])
                  * _DIGITS)                                            # [R, V']
  prefix = jnp.zeros((rows,), jnp.int32)
  above = jnp.zeros((rows,), jnp.float32)     # mass of the elements above the bucket
  keep_all = None
  for shift in range(32 - _DIGIT_BITS, -1, -_DIGIT_BITS):
    digit = (bits >> shift) & (_DIGITS - 1)                             # [R, V]
    weight = flat
    if shift + _DIGIT_BITS < 32:
      in_bucket = (bits >> (shift + _DIGIT_BITS)) == (prefix >> (shift + _DIGIT_BITS))[:, None]
      weight = jnp.where(in_bucket, flat, 0.0)
    hist = jax.ops.segment_sum(weight.ravel(), (segment_base + digit).ravel(),
                               num_segments=rows * chunks * _DIGITS)
    hist = jnp.sum(hist.reshape(rows, chunks, _DIGITS), axis=1)         # [R, 256]
    suffix = jnp.cumsum(hist[:, ::-1], axis=1)[:, ::-1]                 # [R, 256]
    mass = above[:, None] + suffix
    ok = mass > top_p if mode == "reference" else mass >= top_p
    if keep_all is None:
      keep_all = ~ok[:, 0]      # even the whole row is not above p: keep everything
    d = jnp.maximum(jnp.sum(ok, axis=1) - 1, 0).astype(jnp.int32)       # [R]
    beyond = jnp.concatenate([suffix, jnp.zeros((rows, 1), jnp.float32)], axis=1)
    above = above + jnp.take_along_axis(beyond, (d + 1)[:, None], axis=1)[:, 0]
    prefix = prefix | (d << shift)
  if mode == "reference":
    prefix = prefix + 1
  prefix = jnp.where(keep_all, 0, prefix)
  threshold = jax.lax.bitcast_convert_type(prefix, jnp.float32).reshape(
      probs.shape[:-1] + (1,))
  return jnp.minimum(threshold, jnp.max(probs, axis=-1, keepdims=True))


def top_p_filter(probs: jax.Array, top_p: jax.Array, *, mode: str = "reference",
                 impl: str = DEFAULT_IMPL) -> jax.Array:
  """Zeroes the tokens outside the nucleus and renormalises.

  Args:
    probs: `[..., V] float32`, rows summing to 1.
    top_p: `[] float32` in (0, 1].
    mode: "reference" or "standard" (module docstring).
    impl: "sort", "bisect" or "radix" (module docstring); all give the same set.

  Returns:
    `[..., V] float32`, rows summing to 1, the top token always kept.

  Examples:
    >>> import jax.numpy as jnp
    >>> p = jnp.array([0.5, 0.3, 0.2])
    >>> top_p_filter(p, jnp.float32(0.85)).tolist()  # 0.5 + 0.3 <= 0.85
    [0.625, 0.375, 0.0]
    >>> top_p_filter(p, jnp.float32(0.85), mode="standard").tolist()
    [0.5, 0.30000001192092896, 0.20000000298023224]
  """
  finder = {"sort": _threshold_by_sort, "bisect": _threshold_by_bisect,
            "radix": _threshold_by_radix}
  if impl not in finder:
    raise ValueError(f"unknown top_p impl {impl!r}; choose from {sorted(finder)}")
  if mode not in TOP_P_MODES:
    raise ValueError(f"unknown top_p mode {mode!r}; choose from ['reference', 'standard']")
  check_scalar("top_p", top_p, 0.0, 1.0, low_open=True)
  if not jnp.issubdtype(probs.dtype, jnp.floating) or probs.ndim < 1:
    raise ValueError(f"probs must be a floating [..., V] array, got {probs.dtype}"
                     f"{list(probs.shape)}")
  probs = probs.astype(jnp.float32)
  threshold = finder[impl](probs, top_p, mode)              # [..., 1]
  threshold = jnp.where(top_p >= 1.0, 0.0, threshold)       # p = 1 keeps every token, whatever
                                                            # the rounding of the row's sum
  kept = jnp.where(probs >= threshold, probs, 0.0)
  return kept / jnp.sum(kept, axis=-1, keepdims=True)
