"""Saving and loading models: an orbax checkpoint of the parameters plus `config.json`.

Layout of a model folder:
  config.json   {"model": "dit", "config": {DiTConfig fields}}
  params/       orbax StandardCheckpointer output (the NNX Param state)
The model is rebuilt from the JSON config, so a folder is self-describing.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib

import jax
import orbax.checkpoint as ocp
from flax import nnx

from remdm_jax.models.dit import DiT, DiTConfig

_CONFIG = "config.json"
_PARAMS = "params"


def save_model(model: DiT, directory, tokenizer: str | None = None) -> pathlib.Path:
  """Writes `model` to `directory` (created; must not already hold a model).

  `tokenizer` (e.g. "bytes", "gpt2") is recorded so that samplers can decode its ids.
  """
  directory = pathlib.Path(directory).absolute()
  if (directory / _CONFIG).exists():
    raise ValueError(f"{directory} already holds a model (config.json); refusing to overwrite")
  directory.mkdir(parents=True, exist_ok=True)
  state = nnx.state(model, nnx.Param)
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(directory / _PARAMS, state)
  checkpointer.wait_until_finished()
  payload = {"model": "dit", "config": dataclasses.asdict(model.cfg), "tokenizer": tokenizer}
  if jax.process_index() == 0:
    (directory / _CONFIG).write_text(json.dumps(payload, indent=2) + "\n")
  return directory


def load_config(directory) -> DiTConfig:
  """Reads the `DiTConfig` of a model folder, with a clear error if it is not one."""
  directory = pathlib.Path(directory).absolute()
  path = directory / _CONFIG
  if not path.is_file() or not (directory / _PARAMS).is_dir():
    raise ValueError(f"{directory} is not a remdm_jax model folder (needs {_CONFIG} and "
                     f"{_PARAMS}/)")
  payload = json.loads(path.read_text())
  if payload.get("model") != "dit":
    raise ValueError(f"{path}: unknown model type {payload.get('model')!r}; expected 'dit'")
  return DiTConfig(**payload["config"])


def load_tokenizer_name(directory) -> str:
  """The tokenizer recorded with a model folder; GPT-2 for the released vocabulary (50258),
  else bytes, when none was recorded."""
  payload = json.loads((pathlib.Path(directory) / _CONFIG).read_text())
  if payload.get("tokenizer"):
    return payload["tokenizer"]
  return "gpt2" if payload["config"]["vocab_size"] == 50_258 else "bytes"


def _replicated() -> jax.sharding.Sharding:
  """Where loaded parameters go: the first device, or with several processes every device
  of every process (each process reads the same full copy)."""
  if jax.process_count() == 1:
    return jax.sharding.SingleDeviceSharding(jax.devices()[0])
  mesh = jax.sharding.Mesh(jax.devices(), ("devices",))
  return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())


def load_model(directory) -> DiT:
  """Rebuilds the model of a folder written by `save_model` or `python -m remdm_jax.convert`.

  Returns a `DiT`: `model(tokens [B, L] int32, sigma [B] float32) -> logits [B, L, V] f32`,
  honouring the checkpoint's `time_conditioning`.
  """
  directory = pathlib.Path(directory).absolute()
  cfg = load_config(directory)
  abstract = nnx.eval_shape(lambda: DiT(cfg, rngs=nnx.Rngs(0)))
  graphdef, abstract_state, rest = nnx.split(abstract, nnx.Param, ...)
  placement = _replicated()
  abstract_state = jax.tree.map(
      lambda leaf: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=placement),
      abstract_state)
  state = ocp.StandardCheckpointer().restore(directory / _PARAMS, abstract_state)
  return nnx.merge(graphdef, state, rest)
