"""The denoiser protocol: what a sampler must know about a model, carried in one type.

A `Denoiser` is a frozen dataclass registered as a pytree: its `params` are the leaves (so a
denoiser can be a `jax.jit` argument and its parameters are never baked into an executable),
and its functions and flags are static. Wrappers and combinators (guidance) take denoisers and
return denoisers, so nothing a sampler relies on is lost when one is wrapped, as attributes on
a function would be under `lambda`, `functools.partial` or `jax.jit`.

A plain function `(z [B, L] int32, t [B] float32) -> logits [B, L, V]` is accepted wherever a
denoiser is, through `ensure_denoiser`; it is assumed to read `t` (the conservative choice: the
sampler's cache is then refused).

The functions are static: two denoisers whose functions compare equal share a compiled
sampler, so producers build them as small frozen dataclasses (equal when their settings are),
never as fresh closures. Whatever a static function refers to lives as long as the compiled
sampler that used it: weights belong in `params`, never in a closure.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass(frozen=True)
class _Unparameterised:
  """`(params, z, t) -> fn(z, t)` for a plain function; equal for equal `fn`, so two wraps of
  one function share the sampler's compiled executable."""

  fn: Callable

  def __call__(self, params, z, t):
    del params
    return self.fn(z, t)


def _check_optional_int(owner, field: str, low: int) -> None:
  """A declared size or id of a `Denoiser` / `Classifier`: None, or an integer >= low (stored
  as `int`)."""
  value = getattr(owner, field)
  if value is None:
    return
  name = f"{type(owner).__name__}.{field}"
  if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
    raise TypeError(f"{name} must be an integer or None, got {value!r}")
  if value < low:
    raise ValueError(f"{name} must be >= {low}, got {value}")
  object.__setattr__(owner, field, int(value))


@dataclasses.dataclass(frozen=True)
class _Aligned:
  """`(params, z, t) -> logits` of an `apply` whose row `p` predicts position `p + shift`,
  moved so that index `p` holds position `p`'s logits (`shift_rows`); equal for equal
  `apply` and `shift`."""

  apply: Callable
  shift: int

  def __call__(self, params, z, t):
    return shift_rows(self.apply(params, z, t), self.shift)


def shift_rows(x: jax.Array, shift: int) -> jax.Array:
  """`x [B, L, ...]` with row `p` moved to `p + shift` and the first `shift` rows kept
  (`cat([x[:, :1], x[:, :-1]], 1)` for shift 1, as Dream-class models align their logits);
  `x` itself for shift 0."""
  if not shift:
    return x
  return jnp.concatenate([x[:, :shift], x[:, :-shift]], axis=1)


@functools.partial(jax.tree_util.register_dataclass, data_fields=["params"],
                   meta_fields=["apply", "features_apply", "head_apply", "reads_t",
                                "vocab_size", "mask_id", "prefill_apply", "cached_apply",
                                "shift", "prefill_and_cached_apply"])
@dataclasses.dataclass(frozen=True, eq=False)
class Denoiser:
  """A masked diffusion model as the sampler sees it.

  `denoiser(z, t)` is `apply(params, z, t)`: `z [B, L] int32` (the mask id where masked),
  `t [B] float32` in (0, 1], raw logits `[B, L, V]` in any float dtype (`V` includes the mask
  id; the sampler applies SUBS), their index `p` the logits of position `p` (with `shift`,
  after moving the model's rows into place).

  Attributes:
    apply: `(params, z, t) -> logits [B, L, V]`.
    params: the pytree `apply` reads (model weights, guidance strength); None for a plain
      function. A pytree leaf: a new value reuses a compiled sampler.
    features_apply, head_apply: optional split contract, both or neither:
      `features_apply(params, z, t) -> h [B, L, D]` and a position-wise
      `head_apply(params, h [B, K, D], t) -> logits [B, K, V]`, with
      `head(features(z, t), t) == denoiser(z, t)`. The Bernoulli strategies then apply the
      head only to the rows they draw.
    reads_t: whether the logits depend on `t`. The sampler's `cache=True` (reuse a step's
      logits when no token changed) is exact only for `reads_t=False`, and refused otherwise.
    vocab_size: `V` when known (checked against the logits' last axis), else None.
    mask_id: the mask id the function was built for when it uses one (the guided denoisers
      of `classifier_guidance`), else None; a sampler with another mask id refuses it.
    prefill_apply, cached_apply: optional key-value cache contract, both or neither (needs
      the split contract and `reads_t=False`), used by block decoding's `kv_cache`:
      `prefill_apply(params, z [B, L] int32) -> (h [B, L, D], cache)` is `features` that
      also returns the attention keys and values of every position (any pytree), and
      `cached_apply(params, z_w [B, W] int32, positions [B, W] int32, fresh [B, W] bool,
      cache) -> h [B, W, D]` runs the rows `z_w` standing at `positions`, attending to the
      cache's keys and values with those of the `fresh` rows replaced by their new ones (the
      stored cache is not changed).
    prefill_and_cached_apply: optional, with the cache contract: `(params, z_p [R, L],
      z_w [B, W], positions, fresh, cache) -> ((h_p, cache_p), h_w)`, the two calls in one
      pass over the model's layers (the weights read once; LLaDA has it). Without it,
      `prefill_and_cached` makes the two calls.
    shift: 0, or 1 for models whose row `p - 1` predicts position `p` (Dream-class models,
      and the GPT-2 MDMs of Ye et al. 2024): `apply` returns the model's rows as they are,
      `denoiser(z, t)` moves them into place (`shift_rows`; position 0 keeps row 0, as
      those models do), and the split and cache contracts' rows are the model's, so the
      head of row `p - shift` (`feature_rows`) gives position `p`'s logits. The samplers
      honour it: block decoding's caches run the row before a block too.
  """

  apply: Callable
  params: Any = None
  features_apply: Callable | None = None
  head_apply: Callable | None = None
  reads_t: bool = True
  vocab_size: int | None = None
  mask_id: int | None = None
  prefill_apply: Callable | None = None
  cached_apply: Callable | None = None
  shift: int = 0
  prefill_and_cached_apply: Callable | None = None

  def __post_init__(self):
    if not callable(self.apply):
      raise TypeError(f"Denoiser.apply must be a function (params, z, t) -> logits, got "
                      f"{self.apply!r:.80}")
    if (self.features_apply is None) != (self.head_apply is None):
      raise ValueError("Denoiser needs both features_apply and head_apply (the split "
                       "contract) or neither")
    if (self.prefill_apply is None) != (self.cached_apply is None):
      raise ValueError("Denoiser needs both prefill_apply and cached_apply (the key-value "
                       "cache contract) or neither")
    if self.prefill_apply is not None and (not self.is_split or self.reads_t):
      raise ValueError("Denoiser's key-value cache contract (prefill_apply, cached_apply) "
                       "needs the split contract and reads_t=False")
    if self.prefill_and_cached_apply is not None and self.prefill_apply is None:
      raise ValueError("Denoiser.prefill_and_cached_apply fuses the key-value cache contract's "
                       "two calls; give prefill_apply and cached_apply too")
    if not isinstance(self.reads_t, bool):
      raise TypeError(f"Denoiser.reads_t must be a bool, got {self.reads_t!r}")
    _check_optional_int(self, "vocab_size", 1)
    _check_optional_int(self, "mask_id", 0)
    if (isinstance(self.shift, (bool, np.bool_)) or not isinstance(self.shift, (int, np.integer))
        or self.shift not in (0, 1)):
      raise ValueError(f"Denoiser.shift must be 0 or 1 (the row that predicts position p is "
                       f"p - shift), got {self.shift!r}")
    object.__setattr__(self, "shift", int(self.shift))

  @classmethod
  def wrap(cls, fn: Callable, *, reads_t: bool = True,
           vocab_size: int | None = None) -> "Denoiser":
    """A plain `fn(z, t) -> logits` as a denoiser; `reads_t=False` declares that it ignores
    `t` (what `cache=True` needs)."""
    if isinstance(fn, Denoiser):
      raise TypeError("Denoiser.wrap takes a plain function; this is already a Denoiser "
                      "(use dataclasses.replace to change its fields)")
    if not callable(fn):
      raise TypeError(f"denoiser must be a function (z [B, L] int32, t [B] float32) -> "
                      f"logits [B, L, V], got {fn!r:.80}")
    return cls(_Unparameterised(fn), reads_t=reads_t, vocab_size=vocab_size)

  def __call__(self, z: jax.Array, t: jax.Array) -> jax.Array:
    """Logits `[B, L, V]` (any float dtype) of `z [B, L] int32` at times `t [B] float32`,
    index `p` for position `p` whatever the `shift`."""
    return self.aligned_apply(self.params, z, t)

  @property
  def aligned_apply(self) -> Callable:
    """`(params, z, t) -> logits`, index `p` for position `p` (`apply` itself for shift 0):
    what combinators (guidance) build on."""
    return _Aligned(self.apply, self.shift) if self.shift else self.apply

  def feature_rows(self, positions: jax.Array) -> jax.Array:
    """The rows of `features` (or of the cache contract's `h`) whose head gives the logits
    of `positions` (int32, any shape): `max(positions - shift, 0)`."""
    return jnp.maximum(positions - self.shift, 0) if self.shift else positions

  @property
  def takes_params(self) -> bool:
    """False for a wrapped plain function, which has no parameters to replace."""
    return not isinstance(self.apply, _Unparameterised)

  @property
  def is_split(self) -> bool:
    """Whether it offers the split contract (`features`, `head`)."""
    return self.features_apply is not None

  def features(self, z: jax.Array, t: jax.Array) -> jax.Array:
    """The trunk: `h [B, L, D]` (split denoisers only)."""
    return self.features_apply(self.params, z, t)

  def head(self, h: jax.Array, t: jax.Array) -> jax.Array:
    """The position-wise output layer: `h [B, K, D] -> logits [B, K, V]` (split only)."""
    return self.head_apply(self.params, h, t)

  @property
  def has_kv_cache(self) -> bool:
    """Whether it offers the key-value cache contract (`prefill`, `cached`)."""
    return self.prefill_apply is not None

  def prefill(self, z: jax.Array):
    """`(h [B, L, D], cache)`: the trunk of `z [B, L] int32` and every position's keys and
    values (cache contract only)."""
    return self.prefill_apply(self.params, z)

  def cached(self, z_w: jax.Array, positions: jax.Array, fresh: jax.Array, cache) -> jax.Array:
    """The trunk of the rows `z_w [B, W] int32` at `positions [B, W] int32`, attending to
    `cache` with the `fresh [B, W] bool` rows' own keys and values: `h [B, W, D]`."""
    return self.cached_apply(self.params, z_w, positions, fresh, cache)

  @property
  def fuses_prefill(self) -> bool:
    """Whether `prefill_and_cached` is one call (`prefill_and_cached_apply` given)."""
    return self.prefill_and_cached_apply is not None

  def prefill_and_cached(self, z_p: jax.Array, z_w: jax.Array, positions: jax.Array,
                         fresh: jax.Array, cache):
    """`(prefill(z_p), cached(z_w, positions, fresh, cache))`, in one call when the denoiser
    fuses them (`fuses_prefill`)."""
    if self.fuses_prefill:
      return self.prefill_and_cached_apply(self.params, z_p, z_w, positions, fresh, cache)
    return self.prefill(z_p), self.cached(z_w, positions, fresh, cache)

  def with_params(self, params) -> "Denoiser":
    """The same denoiser with other parameters (same structure: no recompilation)."""
    return dataclasses.replace(self, params=params)


def ensure_denoiser(denoiser) -> Denoiser:
  """A `Denoiser` as it is; a plain function `(z, t) -> logits` wrapped (assumed to read t).

  Raises:
    TypeError: neither a Denoiser nor a function.
  """
  if isinstance(denoiser, Denoiser):
    return denoiser
  return Denoiser.wrap(denoiser)


def check_output(denoiser: Denoiser, batch_size: int, seq_len: int, mask_id: int) -> int:
  """Traces the denoiser abstractly and checks its logits; returns `V`.

  Raises:
    ValueError: the logits are not `[batch_size, seq_len, V]` floats, `V` differs from the
      declared `vocab_size`, `mask_id` is not in `[0, V)` or is not the denoiser's own.
  """
  check_has_params(denoiser)
  out = jax.eval_shape(denoiser, jax.ShapeDtypeStruct((batch_size, seq_len), jnp.int32),
                       jax.ShapeDtypeStruct((batch_size,), jnp.float32))
  shape = getattr(out, "shape", None)
  if shape is None or len(shape) != 3 or shape[:2] != (batch_size, seq_len):
    raise ValueError(
        f"denoiser must return logits [batch_size, seq_len, V] = [{batch_size}, {seq_len}, V], "
        f"got {list(shape) if shape is not None else type(out).__name__}")
  if not jnp.issubdtype(out.dtype, jnp.floating):
    raise ValueError(f"denoiser must return floating logits, got dtype {out.dtype}")
  if denoiser.vocab_size is not None and denoiser.vocab_size != shape[2]:
    raise ValueError(f"denoiser declares vocab_size {denoiser.vocab_size} but returns logits "
                     f"with V = {shape[2]}")
  if not mask_id < shape[2]:
    raise ValueError(f"mask_id must be in [0, V) = [0, {shape[2]}), got {mask_id}")
  if denoiser.mask_id is not None and denoiser.mask_id != mask_id:
    raise ValueError(f"mask_id {mask_id} differs from the denoiser's own mask id "
                     f"{denoiser.mask_id} (the one it was built with, e.g. by "
                     "classifier_guidance(mask_id=...)); sample with the same mask id")
  return shape[2]


def check_has_params(denoiser: Denoiser) -> None:
  """A denoiser of an `apply(params, z, t)` function must hold its parameters.

  Raises:
    ValueError: `Denoiser(apply)` was built without params and none were given.
  """
  if denoiser.takes_params and denoiser.params is None:
    raise ValueError("params: this Denoiser(apply) holds no parameters (params=None); pass "
                     "them to the sampler (sampler(key, params)) or build "
                     "Denoiser(apply, params); for a function of (z, t) alone use "
                     "Denoiser.wrap(fn)")


@functools.partial(jax.tree_util.register_dataclass, data_fields=["params"],
                   meta_fields=["apply", "num_classes"])
@dataclasses.dataclass(frozen=True, eq=False)
class Classifier:
  """A classifier of noisy sequences for classifier-based guidance:
  `classifier(x [B, L, V] float32 one-hot (or soft) rows, t [B] float32) -> logits [B, C]`,
  computed as `apply(params, x, t)`. Taking one-hot rows, not ids, lets the first-order
  guidance differentiate it; like `Denoiser`, its `params` are pytree leaves. `num_classes`
  (C, when known; `models.as_classifier` sets it) lets guidance check a target class before
  sampling."""

  apply: Callable
  params: Any = None
  num_classes: int | None = None

  def __post_init__(self):
    if not callable(self.apply):
      raise TypeError(f"Classifier.apply must be a function (params, x, t) -> logits, got "
                      f"{self.apply!r:.80}")
    _check_optional_int(self, "num_classes", 2)

  def __call__(self, x: jax.Array, t: jax.Array) -> jax.Array:
    """Class logits `[B, C]` of `x [B, L, V] float32` rows at times `t [B] float32`."""
    return self.apply(self.params, x, t)


def ensure_classifier(classifier) -> Classifier:
  """A `Classifier` as it is; a plain function `(x, t) -> logits [B, C]` wrapped.

  Raises:
    TypeError: neither a Classifier nor a function.
  """
  if isinstance(classifier, Classifier):
    return classifier
  if isinstance(classifier, Denoiser) or not callable(classifier):
    raise TypeError(f"classifier must be a function (x [B, L, V] float32, t [B] float32) -> "
                    f"logits [B, C], got {classifier!r:.80}")
  return Classifier(_Unparameterised(classifier))
