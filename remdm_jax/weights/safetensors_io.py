"""The safetensors file format, read one tensor at a time through a memory map.

A safetensors file is an 8-byte little-endian header length `n`, `n` bytes of JSON mapping
each tensor name to `{"dtype", "shape", "data_offsets": [begin, end]}` (offsets into the
byte buffer that follows the header; an optional `"__metadata__"` entry holds strings), then
the raw little-endian bytes. `SafetensorsFile` parses the header only; `file[name]` is a
read-only `np.memmap` view of one tensor, so a large checkpoint is never read whole into host
memory. `write_safetensors` writes the same format (for tests and small exports). This module
does not depend on the `safetensors` package and knows nothing of any model's key names.
"""

from __future__ import annotations

import dataclasses
import json
import math
import pathlib
import struct

import ml_dtypes
import numpy as np

from remdm_jax.files import reading

DTYPES: dict[str, np.dtype] = {
    "F64": np.dtype("<f8"), "F32": np.dtype("<f4"), "F16": np.dtype("<f2"),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "I64": np.dtype("<i8"), "I32": np.dtype("<i4"), "I16": np.dtype("<i2"),
    "I8": np.dtype("i1"), "U8": np.dtype("u1"), "U16": np.dtype("<u2"),
    "U32": np.dtype("<u4"), "U64": np.dtype("<u8"), "BOOL": np.dtype("?"),
}
_NAMES = {dtype: name for name, dtype in DTYPES.items()}
_MAX_HEADER = 100_000_000   # bytes; the format's own readers refuse larger headers


@dataclasses.dataclass(frozen=True)
class TensorInfo:
  """Where one tensor lies: `dtype`, `shape` and its byte range `[start, stop)` in the file
  (absolute offsets, the header included)."""

  dtype: np.dtype
  shape: tuple[int, ...]
  start: int
  stop: int


def _entry(path, name: str, entry, base: int, size: int) -> TensorInfo:
  """One header entry checked against the format and the file size."""
  if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
    raise ValueError(f"{path}: tensor {name!r} has a malformed header entry {entry!r:.120}")
  if entry["dtype"] not in DTYPES:
    raise ValueError(f"{path}: tensor {name!r} has dtype {entry['dtype']!r}; this reader "
                     f"knows {sorted(DTYPES)}")
  shape, offsets = entry["shape"], entry["data_offsets"]
  if (not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape)
      or not isinstance(offsets, list) or len(offsets) != 2
      or not all(isinstance(o, int) for o in offsets)):
    raise ValueError(f"{path}: tensor {name!r} has a malformed shape {shape!r} or "
                     f"data_offsets {offsets!r}")
  dtype = DTYPES[entry["dtype"]]
  begin, end = offsets
  nbytes = math.prod(shape) * dtype.itemsize
  if end - begin != nbytes or begin < 0 or base + end > size:
    raise ValueError(f"{path}: tensor {name!r} of shape {shape} {entry['dtype']} needs "
                     f"{nbytes} bytes, its data_offsets {offsets} give {end - begin} within a "
                     f"{size - base}-byte buffer (truncated or corrupt file)")
  return TensorInfo(dtype, tuple(shape), base + begin, base + end)


def read_header(path) -> tuple[dict[str, TensorInfo], dict[str, str]]:
  """`(tensors, metadata)` of a safetensors file: name -> `TensorInfo`, and the optional
  `__metadata__` strings. Reads only the header.

  Raises:
    ValueError: the file is missing, unreadable, truncated or not in the format (the message
      starts with the path).
  """
  path = pathlib.Path(path)
  with reading(path, "safetensors file"):
    size = path.stat().st_size
    with path.open("rb") as handle:
      head = handle.read(8)
      length = struct.unpack("<Q", head)[0] if len(head) == 8 else None
      if length is None or length > min(_MAX_HEADER, size - 8):
        raise ValueError(f"{path}: not a safetensors file (header length "
                         f"{length} for a {size}-byte file)")
      text = handle.read(length)
  try:
    header = json.loads(text.decode("utf-8"))
  except (UnicodeDecodeError, json.JSONDecodeError) as err:
    raise ValueError(f"{path}: the safetensors header is not JSON ({err})") from None
  if not isinstance(header, dict):
    raise ValueError(f"{path}: the safetensors header is not a JSON object")
  metadata = header.pop("__metadata__", None) or {}
  tensors = {name: _entry(path, name, entry, 8 + length, size)
             for name, entry in header.items()}
  _check_disjoint(path, tensors)
  return tensors, metadata


def _check_disjoint(path, tensors: dict[str, TensorInfo]) -> None:
  """No two tensors share a byte (the reference reader refuses overlapping data_offsets:
  one tensor's bytes read as another's would load silently wrong weights)."""
  ranges = sorted((info.start, info.stop, name) for name, info in tensors.items()
                  if info.stop > info.start)
  for (begin, stop, first), (start, end, second) in zip(ranges, ranges[1:]):
    if start < stop:
      raise ValueError(f"{path}: tensors {first!r} (file bytes [{begin}, {stop})) and "
                       f"{second!r} ([{start}, {end})) overlap; each tensor must have its own "
                       "bytes (corrupt file)")


class SafetensorsFile:
  """A parsed safetensors file: `tensors` (name -> `TensorInfo`) and `file[name]`.

  Examples:
    >>> import tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "x.safetensors")
    >>> write_safetensors(path, {"w": np.arange(6, dtype=np.float32).reshape(2, 3)})
    >>> f = SafetensorsFile(path)
    >>> f.tensors["w"].shape, f["w"].dtype, float(f["w"][1, 2])
    ((2, 3), dtype('float32'), 5.0)
  """

  def __init__(self, path):
    self.path = pathlib.Path(path)
    self.tensors, self.metadata = read_header(self.path)

  def __contains__(self, name: str) -> bool:
    return name in self.tensors

  def __getitem__(self, name: str) -> np.ndarray:
    """The tensor `name` as a read-only memory-mapped array (its bytes are read when used).

    Raises:
      KeyError: no tensor of that name in the file.
    """
    if name not in self.tensors:
      raise KeyError(f"{self.path}: no tensor {name!r}")
    info = self.tensors[name]
    if info.stop == info.start:
      return np.zeros(info.shape, info.dtype)
    raw = np.memmap(self.path, dtype=np.uint8, mode="r", offset=info.start,
                    shape=(info.stop - info.start,))
    return raw.view(info.dtype).reshape(info.shape)


def write_safetensors(path, tensors: dict[str, np.ndarray],
                      metadata: dict[str, str] | None = None) -> None:
  """Writes `tensors` (name -> NumPy array of a dtype in `DTYPES`) as a safetensors file.

  Raises:
    ValueError: a tensor has a dtype the format does not know.
  """
  header, chunks, offset = {}, [], 0
  for name in sorted(tensors):
    array = np.ascontiguousarray(tensors[name])
    dtype = array.dtype.newbyteorder("<") if array.dtype.byteorder == ">" else array.dtype
    if dtype not in _NAMES:
      raise ValueError(f"tensors[{name!r}] has dtype {array.dtype}; the format takes "
                       f"{sorted(str(d) for d in _NAMES)}")
    data = array.astype(dtype, copy=False).tobytes()
    header[name] = {"dtype": _NAMES[dtype], "shape": list(array.shape),
                    "data_offsets": [offset, offset + len(data)]}
    chunks.append(data)
    offset += len(data)
  if metadata:
    header["__metadata__"] = dict(metadata)
  text = json.dumps(header, separators=(",", ":")).encode("utf-8")
  text += b" " * (-len(text) % 8)           # the data starts 8-byte aligned
  with pathlib.Path(path).open("wb") as handle:
    handle.write(struct.pack("<Q", len(text)))
    handle.write(text)
    for data in chunks:
      handle.write(data)
