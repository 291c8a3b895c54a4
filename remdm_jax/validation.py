"""One validation layer for configs and public arguments: types, finiteness and ranges.

Every config dataclass calls `check_fields(self)` first in its `__post_init__`: each field must
hold its annotated type (`int` fields take Python or NumPy integers but not `bool` or `1.5`;
`float` fields take any real number but not `bool` or a string, and must be finite; `bool`
fields take only booleans), and NumPy scalars are stored as Python scalars, so configs stay
hashable and JSON-serialisable. Ranges are then checked with `check_range`, whose message
names the argument, the allowed interval and the value received. `option(default, help)`
declares a field with the text that `--help` prints for it.

Wrong types raise `ArgumentTypeError`, which is both a `TypeError` and a `ValueError`: the
command lines report it as one `error:` line like any other bad value.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import types
import typing

import jax
import jax.numpy as jnp
import numpy as np


class ArgumentTypeError(TypeError, ValueError):
  """An argument of the wrong type (a `TypeError` that the CLIs report like a `ValueError`)."""


def option(default, help_text: str):
  """A config field with its default and its `--help` text (`field.metadata["help"]`, read
  by the command lines; no source file is needed). Defaults, equality and hashing are those
  of a plain `name: type = default` field."""
  return dataclasses.field(default=default, metadata={"help": help_text})


def _as_int(name: str, value) -> int:
  if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
    raise ArgumentTypeError(f"{name} must be an integer, got {value!r}")
  return int(value)


def _as_float(name: str, value) -> float:
  if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
    raise ArgumentTypeError(f"{name} must be a number, got {value!r}")
  value = float(value)
  if not math.isfinite(value):
    raise ValueError(f"{name} must be a finite number, got {value}")
  return value


def _as_bool(name: str, value) -> bool:
  if not isinstance(value, (bool, np.bool_)):
    raise ArgumentTypeError(f"{name} must be true or false, got {value!r}")
  return bool(value)


def _as_str(name: str, value) -> str:
  if not isinstance(value, str):
    raise ArgumentTypeError(f"{name} must be a string, got {value!r}")
  return value


_CONVERTERS = {int: _as_int, float: _as_float, bool: _as_bool, str: _as_str}


def coerce(name: str, value, kind):
  """`value` as the annotated `kind` (int, float, bool, str or `X | None`), or an error."""
  options = typing.get_args(kind) if typing.get_origin(kind) in (typing.Union,
                                                                 types.UnionType) else (kind,)
  if value is None and type(None) in options:
    return None
  if isinstance(value, jax.core.Tracer):
    raise ArgumentTypeError(
        f"{name} got a traced value ({value}); configs are static under jax.jit. To sweep "
        "eta, top_p or temperature as data, build the plan outside the traced function "
        "(plan, rule = remdm_jax.build_plan(config)) and pass plan as an argument: "
        "sample_with_plan(key, denoiser, plan, rule, ...) or make_sampler(...)(key, params, "
        "plan=plan)")
  kind = next(k for k in options if k is not type(None))
  return _CONVERTERS[kind](name, value) if kind in _CONVERTERS else value


def check_fields(config) -> None:
  """Checks every field of a (frozen) dataclass against its annotation, in place."""
  hints = typing.get_type_hints(type(config))
  for field in dataclasses.fields(config):
    value = getattr(config, field.name)
    normal = coerce(field.name, value, hints[field.name])
    if normal is not value:
      object.__setattr__(config, field.name, normal)


def _interval(low, high, low_open: bool, high_open: bool) -> str:
  bound = lambda x: str(x) if isinstance(x, int) else f"{x:g}"   # ints exact, at any size
  left = "(-inf" if low is None else ("(" if low_open else "[") + bound(low)
  right = "inf)" if high is None else bound(high) + (")" if high_open else "]")
  return f"{left}, {right}"


def check_range(name: str, value, low=None, high=None, *, low_open: bool = False,
                high_open: bool = False, context: str = ""):
  """Returns `value` if it lies in the interval, else raises a `ValueError` naming it.

  Example message: `num_steps must be in [1, inf), got 0`; `context` follows the interval
  (e.g. " for strategy 'cap'").
  """
  if isinstance(value, numbers.Real) and math.isnan(value):
    raise ValueError(f"{name} must be in {_interval(low, high, low_open, high_open)}"
                     f"{context}, got nan")
  below = low is not None and (value <= low if low_open else value < low)
  above = high is not None and (value >= high if high_open else value > high)
  if below or above:
    raise ValueError(f"{name} must be in {_interval(low, high, low_open, high_open)}"
                     f"{context}, got {value!r}")
  return value


def check_scalar(name: str, value, low=None, high=None, **interval) -> None:
  """Checks a number that may be traced: a concrete value (Python, NumPy or a concrete JAX
  scalar) must be a finite real in the interval; a traced one is data and is left alone."""
  if isinstance(value, jax.core.Tracer):          # data inside jit / vmap / grad
    return
  number = np.asarray(value)
  if number.shape != () or not np.issubdtype(number.dtype, np.number) or \
      np.issubdtype(number.dtype, np.complexfloating) or number.dtype == bool:
    raise ArgumentTypeError(f"{name} must be a real scalar, got {value!r}")
  check_range(name, _as_float(name, float(number)), low, high, **interval)


def check_int(name: str, value, low=None, high=None) -> int:
  """A Python or NumPy integer argument in `[low, high]`, as `int`."""
  return check_range(name, _as_int(name, value), low, high)


def check_items(name: str, value, what: str, accepts) -> list:
  """A list (or other iterable) of items that `accepts(item)`, returned as a list; a bare
  string or bytes is refused, since iterating it would silently give its characters, and so
  is an item not accepted (the message names the first one and its index). `what` names
  the items: `"x must be a list of {what}"`."""
  if isinstance(value, (str, bytes)):
    raise ArgumentTypeError(f"{name} must be a list of {what}, got {type(value).__name__} "
                            f"{value!r:.40} (iterating it would give its characters)")
  try:
    items = list(value)
  except TypeError:
    raise ArgumentTypeError(f"{name} must be a list of {what}, got "
                            f"{type(value).__name__}") from None
  for i, item in enumerate(items):
    if not accepts(item):
      raise ArgumentTypeError(f"{name} must be a list of {what}, got "
                              f"{type(item).__name__} {item!r:.40} at index {i}")
  return items


def check_string(name: str, value) -> str:
  """`value` if it is a string, else an `ArgumentTypeError` naming `name`, the type and the
  value (shortened)."""
  if not isinstance(value, str):
    raise ArgumentTypeError(f"{name} must be a string, got {type(value).__name__} "
                            f"{value!r:.40}")
  return value


def check_strings(name: str, value) -> list[str]:
  """A list (or other iterable) of strings, returned as a list (`check_items`)."""
  return check_items(name, value, "strings", lambda item: isinstance(item, str))


def check_choice(name: str, value, choices) -> None:
  """Raises a `ValueError` listing the choices when `value` is not one of them."""
  if value not in choices:
    raise ValueError(f"unknown {name} {value!r}; choose from {sorted(choices)}")


# Arrays: shapes and dtypes are static under jax.jit and always checked; the values of an
# array are read only when it is concrete (`is_concrete`), so a traced argument passes on
# its shape and dtype alone.

_KINDS = {"int": ("integer", lambda d: jnp.issubdtype(d, jnp.integer)),
          "float": ("floating-point", lambda d: jnp.issubdtype(d, jnp.floating)),
          "bool": ("boolean", lambda d: d == np.bool_)}


def is_concrete(value) -> bool:
  """True when the values of an array can be read here: it is not traced (`jax.core.Tracer`)
  and this process holds all of it."""
  return (not isinstance(value, jax.core.Tracer) and
          getattr(value, "is_fully_addressable", True))


def _shape_text(shape) -> str:
  return "[" + ", ".join("*" if n is None else str(n) for n in shape) + "]"


def as_array(name: str, value):
  """`value` as an array: a JAX array (traced or not) or NumPy array as it is, a number or a
  nested list through `np.asarray`; anything else (None, a string, a ragged list, a list
  of objects) raises `ArgumentTypeError` naming the argument."""
  if isinstance(value, (jax.Array, np.ndarray)):
    return value
  if value is None or isinstance(value, (str, bytes)):
    raise ArgumentTypeError(f"{name} must be an array, got {value!r}")
  try:
    array = np.asarray(value)
  except (TypeError, ValueError):
    raise ArgumentTypeError(f"{name} must be an array (a rectangular nested list of "
                            f"numbers at most), got {type(value).__name__}") from None
  if array.dtype == object or array.dtype.kind in "USV":
    raise ArgumentTypeError(f"{name} must be an array of numbers, got "
                            f"{type(value).__name__} of {array.dtype}")
  return array


def check_array(name: str, value, *, ndim: int | None = None, shape=None,
                dtype: str | None = None, dims: str = ""):
  """Checks the rank, shape and dtype kind of an array-like; returns it as an array.

  Only `.shape` and `.dtype` are read, so this holds under `jax.jit` too.

  Args:
    name: the argument's name, for the message.
    value: a JAX array (or tracer), a NumPy array, a number or a nested list.
    ndim: the required rank, or None for any.
    shape: the required shape, a tuple whose None entries match any size, or None.
    dtype: "int" (signed or unsigned integers, not bool), "float" (any floating type,
      bfloat16 included), "bool", or None for any.
    dims: the shape's symbols for the message, e.g. "[B, L]".

  Raises:
    ArgumentTypeError: not an array, or the wrong dtype kind.
    ValueError: the wrong rank or shape, e.g.
      `valid must have shape [B, L] = [2, 4], got [4]`.
  """
  array = as_array(name, value)
  if ndim is not None and array.ndim != ndim:
    raise ValueError(f"{name} must have {ndim} dimension{'s' * (ndim != 1)}"
                     f"{' ' + dims if dims else ''}, got shape {list(array.shape)}")
  if shape is not None and (len(shape) != array.ndim or any(
      want is not None and want != got for want, got in zip(shape, array.shape))):
    raise ValueError(f"{name} must have shape {dims + ' = ' if dims else ''}"
                     f"{_shape_text(shape)}, got {list(array.shape)}")
  if dtype is not None:
    check_choice("dtype kind", dtype, _KINDS)
    words, test = _KINDS[dtype]
    if not test(array.dtype):
      raise ArgumentTypeError(f"{name} must hold {words} values, got dtype {array.dtype}")
  return array


def check_ids(name: str, value, low: int, high: int, *, exclude: int | None = None,
              excluded: str = "", shape=None, dims: str = ""):
  """An integer array whose values lie in `[low, high)` (and differ from `exclude`, which
  `excluded` names in the message, e.g. "the mask id"); returns it as an array.

  The dtype (and `shape`, as in `check_array`) is always checked; the values only when the
  array is concrete (`is_concrete`), since under a trace they cannot be read. The message
  names the first offending value and its index:
  `x must hold ids in [0, 5), got 7 at index (1, 3)`.
  """
  array = check_array(name, value, shape=shape, dtype="int", dims=dims)
  if not is_concrete(array) or array.size == 0:
    return array
  xp = np if isinstance(array, np.ndarray) else jnp
  with jax.ensure_compile_time_eval():          # a concrete array inside a user's trace too
    bad = (array < low) | (array >= high)
    if exclude is not None:
      bad = bad | (array == exclude)
    if bool(bad.any()):
      index = np.unravel_index(int(xp.argmax(bad)), array.shape)
      where = tuple(int(i) for i in index)
      where = f" at index {where[0] if len(where) == 1 else where}" if where else ""
      other = "" if exclude is None else f" other than {excluded + ' ' * bool(excluded)}{exclude}"
      raise ValueError(f"{name} must hold ids in [{low}, {high}){other}, got "
                       f"{int(array[index])}{where}")
  return array
