"""Loading a released LLaDA folder into `remdm_jax.models.llada.LLaDA`, one tensor at a time.

A released folder holds `config.json` (the reference field names, read by
`LLaDAConfig.from_hf`), sharded `model-0000k-of-0000n.safetensors` files and
`model.safetensors.index.json`, whose `weight_map` maps each key to its shard (a folder with
a single `model.safetensors` and no index is read too). Keys are
`model.transformer.wte.weight`, `model.transformer.blocks.{i}.{attn_norm,ff_norm}.weight`,
`model.transformer.blocks.{i}.{q_proj,k_proj,v_proj,attn_out,ff_proj,up_proj,ff_out}.weight`
(PyTorch `[out, in]`, transposed here to the `[in, out]` kernels), `model.transformer.ln_f.weight`
and `model.transformer.ff_out.weight` (absent with `weight_tying`).

The model is created abstractly (`nnx.eval_shape`), every key, shard and shape is checked
from the safetensors headers before any weight is read, and each tensor is then read through
a memory map and placed on its device(s) alone, so the model never exists whole in host
memory. Tokenizer files are not read here.
"""

from __future__ import annotations

import json
import pathlib
import re

import jax
import numpy as np
from flax import nnx
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from remdm_jax import files
from remdm_jax.files import read_json_object
from remdm_jax.models.llada import DTYPES, LLaDA, LLaDAConfig
from remdm_jax.weights.safetensors_io import SafetensorsFile, write_safetensors
from remdm_jax.parallel.sharding import param_spec
from remdm_jax.validation import check_choice

INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"
_PREFIX = "model.transformer."
_FLOATS = ("float64", "float32", "float16", "bfloat16")

# Tensor-parallel rules over the "model" mesh axis (Megatron-style), on paths like
# "blocks/0/q_proj/kernel": the input projections split their output columns (attention:
# whole heads per device, see `param_sharding`), the two output projections of a block their
# input rows (XLA adds one all-reduce after each), the embedding its vocabulary rows (a
# vocabulary-parallel lookup: one all-reduce, and the residual stream stays whole on every
# device) and the output projection its vocabulary columns. A dimension the axis does not
# divide is replicated. For a 2-way axis the compiled forward has 1 + 2 * n_layers
# all-reduces of `[B, L, D]` and no all-gather (tests/test_llada_sharding.py).
LLADA_RULES: tuple[tuple[str, P], ...] = (
    (r"^blocks/\d+/(q_proj|k_proj|v_proj|ff_proj|up_proj)/kernel$", P(None, "model")),
    (r"^blocks/\d+/(attn_out|ff_out)/kernel$", P("model", None)),
    (r"^wte/embedding$", P("model", None)),
    (r"^ff_out/kernel$", P(None, "model")),
)
# The attention matrices, whose split dimension is heads x head width.
_HEADS = re.compile(r"^blocks/\d+/(q_proj|k_proj|v_proj|attn_out)/kernel$")


def is_llada_folder(directory) -> bool:
  """Whether `directory` holds a released LLaDA model: a `config.json` whose `model_type` is
  "llada" (or whose `architectures` name a LLaDA class), beside safetensors weights."""
  folder = pathlib.Path(directory)
  config = folder / "config.json"
  if not config.is_file() or not ((folder / INDEX).is_file() or (folder / SINGLE).is_file()):
    return False
  payload = read_json_object(config, "model config")
  names = [payload.get("model_type")] + list(payload.get("architectures") or [])
  return any(isinstance(n, str) and n.lower().startswith("llada") for n in names)


def released_key(path: tuple) -> tuple[str, bool]:
  """`(key, transposed)`: the released name of the parameter at an NNX state path, and
  whether its stored layout is the transpose of ours (a PyTorch Linear weight)."""
  *module, leaf = (str(part) for part in path)
  key = _PREFIX + ".".join(module) + ".weight"
  if leaf == "kernel":
    return key, True
  if leaf in ("embedding", "weight"):
    return key, False
  raise ValueError(f"no released key for the parameter {'/'.join(map(str, path))}")


def _weight_map(folder: pathlib.Path) -> dict[str, str]:
  """key -> shard file name, from the index (or the single file's header)."""
  index_path = folder / INDEX
  if not index_path.exists() and (folder / SINGLE).exists():
    return {key: SINGLE for key in SafetensorsFile(folder / SINGLE).tensors}
  index = read_json_object(index_path, "safetensors index")
  weight_map = index.get("weight_map")
  if not isinstance(weight_map, dict) or not all(
      isinstance(k, str) and isinstance(v, str) for k, v in weight_map.items()):
    raise ValueError(f"{index_path}: weight_map must map tensor names to shard file names, "
                     f"got {weight_map!r:.120}")
  for key, name in weight_map.items():
    _check_shard_name(index_path, key, name)
  return weight_map


def _check_shard_name(index_path: pathlib.Path, key: str, name: str) -> None:
  """A shard name must be a plain file name in the index's folder: no folder part, no `..`,
  not absolute; checked before any file is opened, so an index never makes the loader read
  outside the model folder. (A shard that is itself a symbolic link, as in the Hugging Face
  cache's snapshots, is a plain name and is followed.)"""
  if name in ("", ".", "..") or "/" in name or "\\" in name or "\0" in name:
    raise ValueError(f"{index_path}: weight_map[{key!r}] = {name!r} is not a plain shard file "
                     "name in the model folder (no folder part, '..' or absolute path)")


def _open_shards(folder: pathlib.Path, weight_map: dict[str, str]) -> dict[str, SafetensorsFile]:
  """Each shard the index names, parsed (headers only)."""
  shards = {}
  for name in sorted(set(weight_map.values())):
    path = folder / name
    if not path.is_file():
      key = min(k for k, v in weight_map.items() if v == name)
      raise ValueError(f"{path}: missing shard file (the index places {key} in it)")
    shards[name] = SafetensorsFile(path)
  return shards


def _check_keys(expected: dict[str, tuple], weight_map: dict[str, str],
                shards: dict[str, SafetensorsFile], folder: pathlib.Path) -> None:
  """Every expected key is present once with its released shape; nothing else is.

  `expected`: key -> (shape in the released layout, ...)."""
  stored = {key: name for name, shard in shards.items() for key in shard.tensors}
  unknown = sorted((set(weight_map) | set(stored)) - set(expected))
  if unknown:
    where = weight_map.get(unknown[0]) or stored[unknown[0]]
    raise ValueError(f"{folder / where}: unknown tensor {unknown[0]} (not a parameter of "
                     f"this LLaDA config; {len(unknown)} unknown in all)")
  missing = sorted(set(expected) - set(weight_map))
  if missing:
    raise ValueError(f"{folder}: missing tensor {missing[0]} in the weight map "
                     f"({len(missing)} missing in all)")
  for key, (shape, *_) in expected.items():
    shard = shards[weight_map[key]]
    if key not in shard:
      raise ValueError(f"{shard.path}: missing tensor {key} (the index places it in this "
                       "shard)")
    found = shard.tensors[key].shape
    if found != shape:
      raise ValueError(f"{shard.path}: tensor {key} has shape {list(found)}, expected "
                       f"{list(shape)}")
    if np.dtype(shard.tensors[key].dtype).name not in _FLOATS:
      raise ValueError(f"{shard.path}: tensor {key} has dtype {shard.tensors[key].dtype}, "
                       "expected a floating dtype")


def _stored_dtype(weight_map, shards) -> str:
  """The dtype name of the stored embedding (what "as stored" means)."""
  key = _PREFIX + "wte.weight"
  shard = shards.get(weight_map.get(key))
  name = np.dtype(shard.tensors[key].dtype).name if shard and key in shard else "float32"
  return name if name in DTYPES else "float32"


def llada_param_spec(name: str, shape: tuple[int, ...], axis_size: int,
                     head_dim: int) -> P:
  """One parameter's `PartitionSpec` ("blocks/0/q_proj/kernel") by `LLADA_RULES` over a
  "model" axis of `axis_size` devices; q/k/v/attn_out stay replicated unless every device
  gets whole heads (a multiple of `head_dim` columns or rows; a split head would make XLA
  exchange partial attention scores)."""
  spec = param_spec(name, shape, axis_size, LLADA_RULES)
  if _HEADS.match(name) and spec != P():
    split = shape[0] if spec[0] == "model" else shape[1]
    if (split // axis_size) % head_dim:
      return P()
  return spec


def param_sharding(mesh: Mesh, path: tuple, shape: tuple[int, ...],
                   head_dim: int) -> NamedSharding:
  """One parameter's `NamedSharding` by `llada_param_spec`: replicated without a "model"
  axis (or one of size 1)."""
  if "model" not in mesh.axis_names or mesh.shape["model"] == 1:
    return NamedSharding(mesh, P())
  name = "/".join(map(str, path))                                          # blocks/0/q_proj/kernel
  return NamedSharding(mesh, llada_param_spec(name, shape, mesh.shape["model"], head_dim))


def llada_shardings(state, mesh: Mesh, cfg: LLaDAConfig):
  """`NamedSharding`s for a LLaDA state (`nnx.split(model)[1]`, arrays or shape structs),
  the same structure as `state`, by `param_sharding`."""
  return nnx.from_flat_state([
      (path, variable.replace(param_sharding(mesh, path, variable.get_value().shape,
                                             cfg.head_dim)))
      for path, variable in nnx.to_flat_state(state)])


def _place(array: np.ndarray, dtype, sharding) -> jax.Array:
  """One host tensor on its device(s): replicated onto the default device, or read per
  shard (only the slices each local device holds) for a `NamedSharding`."""
  if sharding is None:
    return jax.device_put(np.array(array, dtype=dtype))   # one tensor copied, then freed
  return jax.make_array_from_callback(
      array.shape, sharding, lambda index: np.array(array[index], dtype=dtype))


def load_llada(directory, *, dtype: str | None = None, mesh: Mesh | None = None) -> LLaDA:
  """A released LLaDA folder as an NNX `LLaDA` model.

  Args:
    directory: the folder with `config.json`, the safetensors shards and their index.
    dtype: parameter and compute dtype ("float32", "bfloat16", "float16"); None keeps the
      stored dtype (bfloat16 for the released 8B models, about 16 GB of parameters).
    mesh: optional mesh; its "model" axis splits the matrices by `LLADA_RULES` (a mesh
      without one replicates every tensor over its devices). None: the default device.

  Returns:
    The model, with every parameter on device.

  Raises:
    ValueError: one line naming the file or tensor: a missing folder, config or index, a
      config this implementation does not cover, a missing shard file, a missing, unknown
      or mis-shaped tensor.
  """
  if dtype is not None:
    check_choice("dtype", dtype, DTYPES)
  if mesh is not None and any(kind != AxisType.Auto for kind in mesh.axis_types):
    kinds = dict(zip(mesh.axis_names, mesh.axis_types))
    raise ValueError(f"mesh axes must be AxisType.Auto (as "
                     f"remdm_jax.parallel.distributed.make_mesh builds them), got {kinds}")
  folder = pathlib.Path(directory)
  if not folder.is_dir():
    raise ValueError(f"{folder}: no such LLaDA folder")
  config = read_json_object(folder / "config.json", "LLaDA config.json")
  weight_map = _weight_map(folder)
  shards = _open_shards(folder, weight_map)
  try:
    cfg = LLaDAConfig.from_hf(config, dtype=dtype or _stored_dtype(weight_map, shards))
  except ValueError as err:
    raise ValueError(f"{folder / 'config.json'}: {err}") from None
  graphdef, state = nnx.split(nnx.eval_shape(lambda: LLaDA(cfg, rngs=nnx.Rngs(0))))
  expected = {}
  for path, variable in nnx.to_flat_state(state):
    key, transposed = released_key(path)
    shape = variable.get_value().shape
    expected[key] = (shape[::-1] if transposed else shape, path, variable, transposed)
  _check_keys(expected, weight_map, shards, folder)
  placed = []
  for key, (_, path, variable, transposed) in expected.items():
    array = shards[weight_map[key]][key]                                   # memory-mapped
    array = array.T if transposed else array                               # [in, out]
    sharding = (None if mesh is None
                else param_sharding(mesh, path, array.shape, cfg.head_dim))
    placed.append((path, variable.replace(_place(array, variable.get_value().dtype,
                                                 sharding))))
  return nnx.merge(graphdef, nnx.from_flat_state(placed))



STEP_FIELD = "remdm_jax_step"     # config.json: the training step of an export


def save_llada(model: LLaDA, directory, *, tokenizer=None, step: int | None = None
               ) -> pathlib.Path:
  """Writes `model` in the released layout (`config.json`, one `model.safetensors`), which
  `load_llada` reads back exactly; `tokenizer.save(directory)` is called when it has a
  `save` method (the character tokenizer of the task models); `step` is recorded in
  `config.json` (`STEP_FIELD`) so that a stale export is recognised.

  Raises:
    ValueError: `directory` already holds a `config.json`.
  """
  folder = pathlib.Path(directory).absolute()
  if (folder / "config.json").exists():
    raise ValueError(f"{folder} already holds a model (config.json); refusing to overwrite")
  folder.mkdir(parents=True, exist_ok=True)
  tensors = {}
  for path, variable in nnx.to_flat_state(nnx.state(model, nnx.Param)):
    key, transposed = released_key(path)
    array = np.asarray(jax.device_get(variable.get_value()))
    tensors[key] = array.T if transposed else array
  write_safetensors(folder / SINGLE, tensors)
  if tokenizer is not None and hasattr(tokenizer, "save"):
    tokenizer.save(folder)
  config = model.cfg.to_hf() | ({} if step is None else {STEP_FIELD: int(step)})
  files.write_atomic(folder / "config.json", json.dumps(config, indent=2) + "\n")
  return folder


def saved_step(directory) -> int | None:
  """The training step `save_llada` recorded in a folder, or None."""
  path = pathlib.Path(directory) / "config.json"
  if not path.is_file():
    return None
  step = read_json_object(path, "LLaDA config.json").get(STEP_FIELD)
  return step if isinstance(step, int) else None
