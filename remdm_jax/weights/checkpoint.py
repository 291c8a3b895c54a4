"""Checkpoint I/O, all of it: model folders and the training state.

A model folder is an orbax checkpoint of the parameters plus `config.json`; `Checkpoints`
keeps the training state (parameters, optimizer, EMA, step) of a run with its config record.

Layout of a model folder::

  config.json   {"model": "dit", "config": {DiTConfig fields}, "tokenizer": ..., "step": ...}
  params/       orbax StandardCheckpointer output (the NNX Param state)

The model is rebuilt from the JSON config, so a folder is self-describing. Loading checks
the config's fields and the stored parameter shapes before reading any array, and reports a
truncated or corrupt parameter file as one error naming the folder.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import json
import logging
import os
import pathlib
import re
import shutil
import sys
import threading
import time
import warnings

import jax
import orbax.checkpoint as ocp
from flax import nnx

from remdm_jax import families, files
from remdm_jax.models.classifier import NoisyClassifier
from remdm_jax.models.dit import DiT, DiTConfig
from remdm_jax.parallel.sharding import param_shardings

_CONFIG = "config.json"
_PARAMS = "params"
_MODEL_KINDS = {"dit": DiT, "noisy_classifier": NoisyClassifier}


def save_model(model: DiT | NoisyClassifier, directory, tokenizer: str | None = None,
               step: int | None = None) -> pathlib.Path:
  """Writes `model` to `directory` (created; must not already hold a model).

  `tokenizer` (e.g. "bytes", "gpt2") is recorded so that samplers can decode its ids; `step`
  (the training step of an export) so that a stale export can be recognised.
  """
  directory = pathlib.Path(directory).absolute()
  if (directory / _CONFIG).exists():
    raise ValueError(f"{directory} already holds a model (config.json); refusing to overwrite")
  directory.mkdir(parents=True, exist_ok=True)
  state = nnx.state(model, nnx.Param)
  with failed_save_is_one_error(directory / _PARAMS, "model parameters"):
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(directory / _PARAMS, state)
    checkpointer.wait_until_finished()
  kind = "noisy_classifier" if isinstance(model, NoisyClassifier) else "dit"
  payload = {"model": kind, "config": dataclasses.asdict(model.cfg), "tokenizer": tokenizer}
  if step is not None:
    payload["step"] = step
  if jax.process_index() == 0:
    files.write_atomic(directory / _CONFIG, json.dumps(payload, indent=2) + "\n")
  return directory


_TEMPORARY = "*.orbax-checkpoint-tmp*"


def _save_failure(err: BaseException, target: pathlib.Path, what: str) -> OSError | None:
  """The one error a failed orbax write becomes (None for a failure that is not I/O): the
  operating system's reason (orbax reports it as `os_error_code='28'`) and the path."""
  text = str(err)
  code = re.search(r"os_error_code='?(\d+)", text)
  if code:
    number = int(code.group(1))
    return OSError(number, f"cannot write the {what} ({os.strerror(number)})", str(target))
  if isinstance(err, OSError):
    return OSError(err.errno, f"cannot write the {what} ({err.strerror or err})", str(target))
  if "Error writing" in text or "Failed writing" in text:
    first = (text.splitlines() or [type(err).__name__])[0][:200]
    return OSError(None, f"cannot write the {what} ({first})", str(target))
  return None


def _remove_temporaries(folder: pathlib.Path, settle: float = 0.2, limit: float = 5.0) -> None:
  """Removes orbax's temporary folders in `folder` until none reappears for two checks
  `settle` seconds apart (writes already queued when a save fails still land; at most
  `limit` seconds). Registered again for the exit, for any write that lands later still."""
  deadline, quiet = time.monotonic() + limit, 0
  while quiet < 2:
    found = list(folder.glob(_TEMPORARY))
    for temporary in found:
      shutil.rmtree(temporary, ignore_errors=True)
    quiet = 0 if found else quiet + 1
    if not settle or time.monotonic() >= deadline:
      return
    time.sleep(settle)


class _QuietSave(logging.Filter):
  """Drops the ERROR records (each with a traceback) that orbax's threads log for the
  failure the save then raises; they are reported once, by the caller."""

  def filter(self, record: logging.LogRecord) -> bool:
    return record.levelno < logging.ERROR


@contextlib.contextmanager
def failed_save_is_one_error(target: pathlib.Path, what: str):
  """Runs an orbax save of `target` so that a failure (a full disk, ...) is one `OSError`
  naming `target`, with no traceback printed from any thread and no orbax temporary folder
  left beside it.

  Within the block, orbax's ERROR log records are dropped, an exception ending a thread is
  kept, not printed, and orbax's leftover coroutines are dropped (`orbax_leftovers_dropped`);
  a save that returns although one of its threads failed raises that failure. The previous
  `threading.excepthook`, `sys.unraisablehook` and logger filters are back on exit.
  """
  quiet, failed = _QuietSave(), []
  previous_hook = threading.excepthook
  threading.excepthook = lambda args: failed.append(args.exc_value)
  loggers = [logging.getLogger(name) for name in ("absl", "orbax")]
  for logger in loggers:
    logger.addFilter(quiet)
  try:
    with orbax_leftovers_dropped():
      yield
    if failed:
      raise failed[0]
  except Exception as err:
    _remove_temporaries(target.parent)
    atexit.register(_remove_temporaries, target.parent, 0.0)
    reported = _save_failure(err, target, what)
    if reported is None:
      raise
    raise reported from None
  finally:
    threading.excepthook = previous_hook
    for logger in loggers:
      logger.removeFilter(quiet)


_PICKLED = ("pytorch_model.bin", "pytorch_model.bin.index.json", "model.pt", "model.pth")


def _refuse_pickled(directory: pathlib.Path) -> None:
  """Refuses a folder whose only weights are pickled PyTorch files (never unpickled)."""
  pickled = [name for name in _PICKLED if (directory / name).is_file()]
  if pickled and not (directory / _PARAMS).is_dir():
    raise ValueError(f"{directory}: holds pickled PyTorch weights ({pickled[0]}), which are "
                     "never read (unpickling can run code); the weights must be safetensors "
                     "(model.safetensors, or shards and model.safetensors.index.json)")


def is_model_folder(directory: pathlib.Path) -> bool:
  """Whether `directory` has the layout `save_model` writes (`config.json` and `params/`)."""
  return (directory / _CONFIG).is_file() and (directory / _PARAMS).is_dir()


def _read_payload(directory: pathlib.Path) -> dict:
  path = directory / _CONFIG
  _refuse_pickled(directory)
  if not path.is_file() or not (directory / _PARAMS).is_dir():
    raise ValueError(f"{directory} is not a remdm_jax model folder (needs {_CONFIG} and "
                     f"{_PARAMS}/)")
  payload = files.read_json_object(path, "model config")
  if payload.get("model") not in _MODEL_KINDS:
    raise ValueError(f"{path}: unknown model type {payload.get('model')!r}; expected one of "
                     f"{sorted(_MODEL_KINDS)}")
  if not isinstance(payload.get("config"), dict):
    raise ValueError(f"{path}: 'config' must be an object of DiTConfig fields")
  return payload


def load_config(directory) -> DiTConfig:
  """Reads the `DiTConfig` of a model folder, with a clear error if it is not one."""
  directory = pathlib.Path(directory).absolute()
  return _config_of(_read_payload(directory), directory)


def _config_of(payload: dict, directory: pathlib.Path) -> DiTConfig:
  """The `DiTConfig` of a read `config.json` payload (errors name the file)."""
  fields = payload["config"]
  known = {f.name for f in dataclasses.fields(DiTConfig)}
  unknown = sorted(set(fields) - known)
  if unknown:
    raise ValueError(f"{directory / _CONFIG}: unknown DiTConfig fields {unknown}; valid "
                     f"fields: {sorted(known)}")
  try:
    return DiTConfig(**fields)
  except ValueError as err:
    raise ValueError(f"{directory / _CONFIG}: {err}") from None


def load_tokenizer_name(directory) -> str:
  """The tokenizer recorded with a model folder; GPT-2 for the released vocabulary (50258),
  else bytes, when none was recorded."""
  payload = _read_payload(pathlib.Path(directory).absolute())
  if payload.get("tokenizer"):
    return payload["tokenizer"]
  return "gpt2" if payload["config"].get("vocab_size") == 50_258 else "bytes"


def exported_step(directory) -> int | None:
  """The training step recorded with a complete model folder, or None (no folder, no step,
  or not a model)."""
  try:
    return _read_payload(pathlib.Path(directory).absolute()).get("step")
  except ValueError:
    return None


def _replicated() -> jax.sharding.Sharding:
  """Where loaded parameters go: the first device, or with several processes every device
  of every process (each process reads the same full copy)."""
  if jax.process_count() == 1:
    return jax.sharding.SingleDeviceSharding(jax.devices()[0])
  mesh = jax.sharding.Mesh(jax.devices(), ("devices",))
  return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())


def _shapes(tree) -> dict[str, tuple]:
  """`dotted.path -> shape` of a parameter tree (orbax metadata or an NNX state)."""
  out = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    keys = [str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))) for k in path]
    out[".".join(k for k in keys if k != "value")] = tuple(leaf.shape)
  return out


def _check_stored_shapes(params_dir: pathlib.Path, abstract_state) -> None:
  """Compares the stored parameter shapes with those the config needs, before reading."""
  with orbax_leftovers_dropped():
    try:
      metadata = ocp.StandardCheckpointer().metadata(params_dir).item_metadata
    except Exception as err:  # orbax raises many types for unreadable metadata
      metadata, reason = None, f"{type(err).__name__}: {str(err).splitlines()[0][:200]}"
    else:
      reason = "missing or corrupt"
  if metadata is None:
    raise ValueError(f"{params_dir}: cannot read the parameters' metadata ({reason})")
  stored = _shapes(metadata)
  needed = _shapes(abstract_state)
  for name in sorted(set(stored) | set(needed)):
    if stored.get(name) != needed.get(name):
      raise ValueError(f"{params_dir}: parameter {name} is stored with shape "
                       f"{stored.get(name)}, but {_CONFIG} needs {needed.get(name)}; the "
                       "config and the parameters do not belong together")


def _from_failed_read(unraisable) -> bool:
  """An orbax coroutine orphaned by a failed read, or a TensorStore callback reaching the
  event loop that orbax already closed after it."""
  code = getattr(unraisable.object, "cr_code", None)
  if code is not None:
    return "orbax" in code.co_filename
  return (unraisable.exc_type is RuntimeError
          and str(unraisable.exc_value) == "Event loop is closed")


def _not_orbax_never_retrieved(record: logging.LogRecord) -> bool:
  message = record.getMessage()
  return not ("never retrieved" in message and "orbax" in message)


def drop_orbax_leftovers() -> None:
  """For the rest of the process, drops the tracebacks a failed orbax read or write leaves
  behind: an unraisable hook passes every other unraisable exception to the previous hook, an
  asyncio log filter drops orbax's "never retrieved" records, and a warnings filter drops the
  warnings of coroutines never awaited. Python reports such leftovers whenever it collects
  them, at exit too, so the command lines call this for their own process
  (`remdm_jax.cli`); library calls use `orbax_leftovers_dropped` around orbax only."""
  previous = sys.unraisablehook

  def hook(unraisable):
    if not _from_failed_read(unraisable):
      previous(unraisable)

  sys.unraisablehook = hook
  logging.getLogger("asyncio").addFilter(_not_orbax_never_retrieved)
  warnings.filterwarnings("ignore", message=r"coroutine .* was never awaited",
                          category=RuntimeWarning)


@contextlib.contextmanager
def orbax_leftovers_dropped():
  """`drop_orbax_leftovers` within the block: the previous `sys.unraisablehook`, asyncio log
  filters and warnings filters are back on exit."""
  previous = sys.unraisablehook
  asyncio_logger = logging.getLogger("asyncio")
  had_filter = _not_orbax_never_retrieved in asyncio_logger.filters
  with warnings.catch_warnings():
    drop_orbax_leftovers()
    try:
      yield
    finally:
      sys.unraisablehook = previous
      if not had_filter:
        asyncio_logger.removeFilter(_not_orbax_never_retrieved)


def _restore(params_dir: pathlib.Path, abstract_state):
  """orbax restore; a failure (truncated or corrupt files) becomes one `ValueError`."""
  with orbax_leftovers_dropped():
    try:
      return ocp.StandardCheckpointer().restore(params_dir, abstract_state)
    except Exception as err:  # orbax / TensorStore raise many types
      first = (str(err).splitlines() or [type(err).__name__])[0].split(" See full")[0][:300]
  raise ValueError(f"{params_dir}: cannot read the parameters (truncated or corrupt files?): "
                   f"{first}")


def load_model(directory, *, dtype: str | None = None, mesh: jax.sharding.Mesh | None = None):
  """The model of a folder, read by the registered model family that recognises it
  (`remdm_jax.families`): a folder written by `save_model` or `remdm-convert` (`load_dit`),
  a released LLaDA folder (`config.json` with `model_type` "llada", safetensors shards and
  their index; `llada_io.load_llada`), or a folder of a family registered by the caller.

  Returns the family's model: a `DiT`, `model(tokens [B, L] int32, sigma [B] float32) ->
  logits [B, L, V] f32`, honouring the checkpoint's `time_conditioning` (or the
  `NoisyClassifier` of a folder trained with the classifier objective), or a `LLaDA` (each
  tensor read and placed alone, in `dtype`, None: as stored). With `mesh`, the parameters
  are split over its "model" axis by the family's rules as they are read.

  `directory` may also be a single file that a family reads (`families.for_file`): a released
  MaskGIT transformer checkpoint (a flax msgpack file; `maskgit_io.load_transformer`: the
  sizes from its shapes, 1024 codes and V - 1025 classes) gives a `MaskGit`, `model(ids [B,
  L] int32) -> logits [B, L, V] float32` on the official ids (class token `label + 1024`
  first, the mask -1 or V - 1).

  Raises:
    ValueError: no family recognises the folder or file (naming the registered ones), pickled
      PyTorch weights, a bad `config.json`, parameters of other shapes than the config needs,
      or unreadable parameter files; the message names the file. `dtype` for a family that
      keeps its saved dtype.
  """
  path = pathlib.Path(directory)
  if path.is_file():
    return families.for_file(path).load_file(path, dtype=dtype, mesh=mesh)
  return model_family(directory).load(path, dtype=dtype, mesh=mesh)


def model_family(directory) -> families.Family:
  """The registered family that recognises a model folder.

  Raises:
    ValueError: pickled PyTorch weights (never read), or no family recognises the folder.
  """
  if families.find(directory) is None:
    _refuse_pickled(pathlib.Path(directory).absolute())
  return families.for_folder(directory)


def load_dit(directory, *, dtype: str | None = None,
             mesh: jax.sharding.Mesh | None = None) -> DiT | NoisyClassifier:
  """Rebuilds the `DiT` or `NoisyClassifier` of a folder written by `save_model` from its
  `config.json`, checking the stored shapes first; its parameters go to the first device
  (every device with several processes), or are split over `mesh` by the DiT rules
  (`parallel.sharding.DIT_RULES`) as they are read.

  Raises:
    ValueError: `dtype` given (the folder keeps its saved dtype), or what `load_model`
      lists for a model folder.
  """
  directory = pathlib.Path(directory).absolute()
  if dtype is not None:
    raise ValueError(f"{directory}: dtype applies to released LLaDA folders only; this model "
                     "folder keeps its saved dtype")
  payload = _read_payload(directory)
  cfg, kind = _config_of(payload, directory), _MODEL_KINDS[payload["model"]]
  abstract = nnx.eval_shape(lambda: kind(cfg, rngs=nnx.Rngs(0)))
  graphdef, abstract_state, rest = nnx.split(abstract, nnx.Param, ...)
  _check_stored_shapes(directory / _PARAMS, abstract_state)
  placement = (jax.tree.map(lambda _: _replicated(), abstract_state) if mesh is None
               else param_shardings(abstract_state, mesh))
  abstract_state = jax.tree.map(
      lambda leaf, where: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=where),
      abstract_state, placement)
  state = _restore(directory / _PARAMS, abstract_state)
  return nnx.merge(graphdef, state, rest)


_ABSENT = object()


def config_differences(saved: dict, current: dict, prefix: str = "") -> list[str]:
  """`"train.learning_rate: 0.001 in the checkpoint, 0.0003 now"` for each field (dotted,
  nested dicts followed) whose value differs between two config records."""
  out = []
  for key in sorted(set(saved) | set(current)):
    old, new = saved.get(key, _ABSENT), current.get(key, _ABSENT)
    if isinstance(old, dict) and isinstance(new, dict):
      out += config_differences(old, new, f"{prefix}{key}.")
    elif old != new:
      shown = ["absent" if v is _ABSENT else json.dumps(v) for v in (old, new)]
      out.append(f"{prefix}{key}: {shown[0]} in the checkpoint, {shown[1]} now")
  return out


class Checkpoints:
  """orbax `CheckpointManager` over the training state plus a JSON record of the config.

  orbax writes each step to a temporary folder and renames it when complete, so an
  interrupted save never damages the last good checkpoint.
  """

  def __init__(self, directory, config_record: dict, max_to_keep: int = 2):
    self.record = config_record
    self.manager = ocp.CheckpointManager(
        pathlib.Path(directory).absolute(),
        options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep,
                                             enable_async_checkpointing=False))

  def save(self, state: dict) -> None:
    """Saves the state under its step (synchronously).

    Raises:
      OSError: the write failed (a full disk, ...): one error naming the step's folder; the
        partial step is removed and the previous checkpoints stay.
    """
    step = int(state["step"])
    directory = pathlib.Path(self.manager.directory)
    with failed_save_is_one_error(directory / str(step), "checkpoint"):
      self.manager.save(step, args=ocp.args.Composite(
          state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(
              {"config": self.record, "data_position": step})), force=True)
      self.manager.wait_until_finished()

  def restore_latest(self, state: dict) -> dict | None:
    step = self.manager.latest_step()
    if step is None:
      return None
    meta = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
    if meta["meta"]["config"] != self.record:
      changed = "; ".join(config_differences(meta["meta"]["config"], self.record))
      raise ValueError(f"the checkpoint in {self.manager.directory} was written for a "
                       f"different config: {changed}; use another workdir")
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
    restored = self.manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract)))
    return restored["state"]
