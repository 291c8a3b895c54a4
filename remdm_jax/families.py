"""Model families in one registry: how a folder is recognised, loaded, tokenized, sampled
and sharded, one registered object per family.

A family is a `Family` subclass registered once (`register(MyFamily())`, or `@register` on
the class): `recognises(folder)` is a cheap check on the folder's files, `load(folder, dtype=,
mesh=)` builds the model, `as_denoiser(model)` plugs it into the sampler, `tokenizer(folder)`
decodes its ids and `param_spec(...)` splits its parameters over the "model" mesh axis.
`remdm_jax.load_model`, `remdm_jax.models.as_denoiser`, `get_tokenizer(folder)` and the
sampling job ask this registry, so adding a family is adding a class and a `register` call.

The registry lives in the core because every room consults it: `models/` and `text/` may not
import `weights/`, and the built-in families (the library's own DiT folders, released LLaDA
folders and MaskGIT checkpoints, `remdm_jax.weights.families`) need the weight readers. This
module imports no room that registers in it (so imports point one way): `import remdm_jax`
imports the built-ins, which register themselves, and they import no orbax until a DiT folder
is read. Families are tried in registration order: the built-ins first. A family may also
read single files (`recognises_file`, `load_file`: a released MaskGIT checkpoint);
`recognises_file` must be a cheap check of the file's first bytes, never a read of the whole
file.
"""

from __future__ import annotations

import abc
import pathlib

import jax
from flax import nnx
from jax.sharding import Mesh, PartitionSpec

from remdm_jax.denoiser import Denoiser
from remdm_jax.parallel.sharding import path_name

_FAMILIES: dict[str, "Family"] = {}


class Family(abc.ABC):
  """One model family. Subclasses set `name` and `model_types` and define the methods below;
  `param_spec` and `check_sampling` have defaults (replicated; no check)."""

  name: str = ""                          # the registry key, e.g. "dit"
  model_types: tuple[type, ...] = ()      # the classes of the models `load` returns
  config_type: type | None = None         # the config class `build` takes (None: cannot build)

  @abc.abstractmethod
  def recognises(self, folder: pathlib.Path) -> bool:
    """Whether `folder` (an existing directory) holds a model of this family; reads at most
    a small file (config.json), never weights."""

  def recognises_file(self, path: pathlib.Path) -> bool:
    """Whether the single file `path` (an existing file) is a model of this family that
    `load_file` reads; no family reads single files by default."""
    del path
    return False

  def load_file(self, path: pathlib.Path, *, dtype: str | None = None,
                mesh: Mesh | None = None):
    """The model of the single file `path` (see `recognises_file`)."""
    raise NotImplementedError(f"model family {self.name!r} reads folders, not single files")

  @abc.abstractmethod
  def load(self, folder: pathlib.Path, *, dtype: str | None = None, mesh: Mesh | None = None):
    """The model of `folder`, its parameters in `dtype` (None: as stored) and split over
    `mesh`'s "model" axis by `param_spec` when given (None: the default device)."""

  @abc.abstractmethod
  def as_denoiser(self, model, schedule=None, *, label: int | None = None) -> Denoiser:
    """The model as a `Denoiser`: `den(z [B, L] int32, t [B] float32) -> [B, L, V]`."""

  @abc.abstractmethod
  def tokenizer_name(self, folder: pathlib.Path) -> str:
    """What `get_tokenizer` takes to rebuild the folder's tokenizer ("bytes", "gpt2" or a
    folder path); sampling jobs record it in their manifest."""

  @abc.abstractmethod
  def tokenizer(self, folder: pathlib.Path):
    """The `Tokenizer` that decodes the ids of the folder's model."""

  @abc.abstractmethod
  def max_length(self, model) -> int:
    """The longest sequence the model takes."""

  def param_spec(self, cfg, name: str, shape: tuple[int, ...], axis_size: int
                 ) -> PartitionSpec:
    """How the parameter `name` ("blocks/0/attn_qkv/kernel") of a model with config `cfg`
    splits over a "model" axis of `axis_size` devices; replicated by default."""
    del cfg, name, shape, axis_size
    return PartitionSpec()

  def check_sampling(self, folder: pathlib.Path, model, tokenizer) -> None:
    """Refuses a model of the family that cannot be sampled (a classifier, a causal model),
    or a tokenizer that does not fit it; nothing to refuse by default."""
    del folder, model, tokenizer

  def build(self, cfg, rngs: nnx.Rngs):
    """A new model of config `cfg` (a `config_type`), initialised from `rngs`: what the
    training loop trains."""
    return self.model_types[0](cfg, rngs=rngs)

  def save(self, model, folder: pathlib.Path, *, tokenizer=None, step: int | None = None
           ) -> None:
    """Writes `model` to `folder` (new) in the family's layout, which `load` reads; the
    training loop's export. `tokenizer` is the one the loop was given, `step` the trained
    step (`exported_step` reads it back)."""
    raise NotImplementedError(f"model family {self.name!r} cannot write models")

  def exported_step(self, folder: pathlib.Path) -> int | None:
    """The training step `save` recorded in `folder`, or None (none, or not a model)."""
    del folder
    return None

  def place(self, model, mesh: Mesh | None) -> None:
    """Puts the model's parameters on `mesh` by `param_spec` (None: left where they are), for
    loaders that build the model whole before placing it."""
    if mesh is not None:
      state = nnx.state(model)
      nnx.update(model, jax.device_put(state, shardings(self, model.cfg, state, mesh)))


def shardings(family: Family, cfg, state, mesh: Mesh):
  """A pytree of `NamedSharding`s matching `state` (arrays or shape structs) by
  `family.param_spec`; a mesh without a "model" axis (or of size 1) replicates everything."""
  size = mesh.shape["model"] if "model" in mesh.axis_names else 1
  spec = lambda path, leaf: (PartitionSpec() if size == 1 else
                             family.param_spec(cfg, path_name(path), tuple(leaf.shape), size))
  return jax.tree_util.tree_map_with_path(
      lambda path, leaf: jax.sharding.NamedSharding(mesh, spec(path, leaf)), state)


def _registered() -> dict[str, Family]:
  """The table (the built-in families register when `remdm_jax` is imported)."""
  return _FAMILIES


def register(family: Family) -> Family:
  """Adds a family (an instance, or a `Family` subclass built without arguments, so that
  `@register` decorates a class); returns what it was given.

  Raises:
    TypeError: not a `Family`. ValueError: no `name`, or a name already registered.
  """
  instance = family() if isinstance(family, type) and issubclass(family, Family) else family
  if not isinstance(instance, Family):
    raise TypeError(f"family must be a remdm_jax.families.Family, got {type(family).__name__}")
  table = _registered()
  if not isinstance(instance.name, str) or not instance.name:
    raise ValueError(f"family {type(instance).__name__} must set a name (a non-empty string)")
  if instance.name in table:
    raise ValueError(f"a family named {instance.name!r} is already registered "
                     f"({type(table[instance.name]).__name__}); choose another name")
  table[instance.name] = instance
  return family


def names() -> list[str]:
  """The registered families' names, in the order they are tried."""
  return list(_registered())


def get(name: str) -> Family:
  """The family registered as `name`.

  Raises:
    ValueError: an unknown name (listing the registered ones).
  """
  table = _registered()
  if name not in table:
    raise ValueError(f"unknown model family {name!r}; choose from {list(table)}")
  return table[name]


def find(folder) -> Family | None:
  """The first family that recognises `folder`, or None (also for a path that is not a
  directory)."""
  folder = pathlib.Path(folder)
  if not folder.is_dir():
    return None
  return next((f for f in _registered().values() if f.recognises(folder)), None)


def for_file(path) -> Family:
  """The first family that reads the single file `path`.

  Raises:
    ValueError: no registered family reads such a file (naming the path and the families).
  """
  path = pathlib.Path(path)
  family = next((f for f in _registered().values() if f.recognises_file(path)), None)
  if family is None:
    raise ValueError(f"{path.absolute()} is a file that no registered model family reads "
                     f"(families: {names()}); a model folder was expected")
  return family


def for_folder(folder) -> Family:
  """The family of a model folder.

  Raises:
    ValueError: no registered family recognises it (one line naming the folder and them).
  """
  family = find(folder)
  if family is None:
    raise ValueError(f"{pathlib.Path(folder).absolute()} is not a remdm_jax model folder: no "
                     f"registered model family recognises it (families: {names()})")
  return family


def for_config(cfg) -> Family:
  """The family whose `config_type` `cfg` is.

  Raises:
    TypeError: no registered family builds models from such a config.
  """
  for family in _registered().values():
    if family.config_type is not None and isinstance(cfg, family.config_type):
      return family
  known = sorted(f.config_type.__name__ for f in _registered().values() if f.config_type)
  raise TypeError(f"model config must be one of {known} (the registered families' configs), "
                  f"got {type(cfg).__name__}")


def for_model(model) -> Family:
  """The family whose `model_types` include the model's class.

  Raises:
    TypeError: no registered family builds such a model (naming the families' classes).
  """
  table = _registered()
  for family in table.values():
    if isinstance(model, family.model_types):
      return family
  known = "; ".join(f"{n}: {', '.join(t.__name__ for t in f.model_types)}"
                    for n, f in table.items())
  raise TypeError(f"model must be a model of a registered family ({known}), got "
                  f"{type(model).__name__}")
