"""Flax msgpack checkpoints (`flax.serialization`), read defensively.

The released MaskGIT checkpoints are single files of this format: a nested map of the model's
variables (`{"params": {...}}`), arrays stored as msgpack extension records (dtype, shape,
bytes). Reading decodes data only (no code runs), refuses files over a size bound before
reading them, and `check_shapes` compares the whole tree with the shapes a model needs before
any weight is used, so a broken file is refused in one line naming the parameter.
"""

from __future__ import annotations

import pathlib

import numpy as np
from flax import serialization

from remdm_jax import files

MAX_BYTES = 16 << 30          # the ImageNet-512 transformer is about 0.7 GB
PARAMS_HEADER = b"\x81\xa6params"   # a msgpack map of one entry, the key "params"


def starts_like_variables(path) -> bool:
  """Whether the file begins as a flax msgpack of `{"params": ...}` (reads 8 bytes)."""
  try:
    with open(path, "rb") as handle:
      return handle.read(len(PARAMS_HEADER)) == PARAMS_HEADER
  except OSError:
    return False


def read_variables(path, what: str = "msgpack checkpoint", max_bytes: int | None = None) -> dict:
  """The nested dict of arrays in a flax msgpack file, refused above `max_bytes` (default
  `MAX_BYTES`).

  Raises:
    ValueError: a missing, unreadable, oversized or malformed file (naming it).
  """
  path, max_bytes = pathlib.Path(path), max_bytes or MAX_BYTES
  if not path.is_file():
    raise ValueError(f"{path.absolute()}: no such {what}")
  if path.stat().st_size > max_bytes:
    raise ValueError(f"{path.absolute()}: {what} of {path.stat().st_size} bytes is over the "
                     f"{max_bytes}-byte bound")
  with files.reading(path, what):
    raw = path.read_bytes()
  try:
    tree = serialization.msgpack_restore(raw)
  except Exception as err:   # msgpack raises several unrelated types on bad bytes
    raise ValueError(f"{path.absolute()}: not a flax msgpack {what} ({type(err).__name__}: "
                     f"{str(err)[:80]})") from None
  if not isinstance(tree, dict):
    raise ValueError(f"{path.absolute()}: a {what} must hold a map of variables, got "
                     f"{type(tree).__name__}")
  return tree


def flatten(tree: dict, prefix: str = "") -> dict[str, object]:
  """`{"a/b/c": leaf}` of a nested dict (keys joined by "/")."""
  flat = {}
  for key, value in tree.items():
    name = f"{prefix}{key}"
    if isinstance(value, dict):
      flat.update(flatten(value, name + "/"))
    else:
      flat[name] = value
  return flat


def unflatten(flat: dict[str, object]) -> dict:
  """The nested dict of `{"a/b/c": leaf}`."""
  tree: dict = {}
  for name, value in flat.items():
    *parents, last = name.split("/")
    node = tree
    for part in parents:
      node = node.setdefault(part, {})
    node[last] = value
  return tree


def check_shapes(flat: dict[str, object], expected: dict[str, tuple[int, ...]], where) -> None:
  """Refuses a tree whose names or shapes differ from `expected` (or whose leaves are not
  finite float arrays), in one line naming the first parameter that differs.

  Raises:
    ValueError: a missing or unexpected parameter, a shape or dtype it cannot be, or a NaN or
      infinity.
  """
  missing = sorted(set(expected) - set(flat))
  if missing:
    raise ValueError(f"{where}: parameter {missing[0]} is missing ({len(missing)} missing)")
  extra = sorted(set(flat) - set(expected))
  if extra:
    raise ValueError(f"{where}: unexpected parameter {extra[0]} ({len(extra)} not of this "
                     "model)")
  for name, shape in expected.items():
    value = flat[name]
    if not isinstance(value, np.ndarray) or not np.issubdtype(value.dtype, np.floating):
      raise ValueError(f"{where}: parameter {name} must be a float array, got "
                       f"{getattr(value, 'dtype', type(value).__name__)}")
    if tuple(value.shape) != tuple(shape):
      raise ValueError(f"{where}: parameter {name} has shape {list(value.shape)}, expected "
                       f"{list(shape)}")
    if not np.all(np.isfinite(value)):
      raise ValueError(f"{where}: parameter {name} holds NaN or infinity")


def write_variables(path, tree: dict) -> None:
  """Writes a nested dict of arrays as a flax msgpack file (atomically)."""
  files.write_atomic(path, serialization.msgpack_serialize(_as_numpy(tree)))


def _as_numpy(tree):
  """The nested dict with every leaf a NumPy array."""
  if isinstance(tree, dict):
    return {k: _as_numpy(v) for k, v in tree.items()}
  return np.asarray(tree)
