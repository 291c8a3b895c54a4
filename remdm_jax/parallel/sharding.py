"""Parameter sharding over the "model" mesh axis (tensor parallel, Megatron-style rules).

Rules are data: `(regex over the parameter path, PartitionSpec)` pairs, first match wins.
Column-parallel layers (fused qkv, MLP input, adaLN) split their output features, row-parallel
layers (attention output, MLP output, the vocabulary projection) split their input features;
XLA inserts the collectives. A dimension that the axis does not divide stays replicated,
as does every parameter no rule matches (norms, the small sigma map).

  mesh = distributed.make_mesh(model_axis=4)
  state = shard_params(nnx.state(model), mesh)
"""

from __future__ import annotations

import re

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DIT_RULES: tuple[tuple[str, P], ...] = (
    (r"attn_qkv/kernel$", P(None, "model")),
    (r"attn_out/kernel$", P("model", None)),
    (r"blocks/\d+/mlp_0/kernel$", P(None, "model")),
    (r"blocks/\d+/mlp_0/bias$", P("model")),
    (r"blocks/\d+/mlp_2/kernel$", P("model", None)),
    (r"adaLN_modulation/kernel$", P(None, "model")),
    (r"adaLN_modulation/bias$", P("model")),
    (r"vocab_embed/embedding$", P(None, "model")),
    (r"output_linear/kernel$", P("model", None)),
)


def path_name(path) -> str:
  """'blocks/0/attn_qkv/kernel' from a pytree key path (NNX `.value` leaves dropped)."""
  names = []
  for entry in path:
    name = getattr(entry, "key", getattr(entry, "name", getattr(entry, "idx", entry)))
    if name != "value":
      names.append(str(name))
  return "/".join(names)


def param_spec(name: str, shape: tuple[int, ...], axis_size: int,
               rules=DIT_RULES) -> P:
  """The PartitionSpec of one parameter: the first matching rule, replicated where the
  "model" axis does not divide the dimension it would split."""
  for pattern, spec in rules:
    if re.search(pattern, name):
      if len(spec) != len(shape):
        raise ValueError(f"rule {pattern!r} has {len(spec)} axes but {name} has shape {shape}")
      if all(axis is None or dim % axis_size == 0 for axis, dim in zip(spec, shape)):
        return spec
      return P()
  return P()


def param_shardings(state, mesh: Mesh, rules=DIT_RULES):
  """A pytree of `NamedSharding`s matching `state` (any pytree of arrays or shape structs).

  Leaves whose path ends like a parameter's (optimizer moments `.../mu/blocks/0/...` too)
  follow its rule; a mesh without a "model" axis replicates everything.
  """
  if "model" not in mesh.axis_names:
    return jax.tree.map(lambda _: NamedSharding(mesh, P()), state)
  axis_size = mesh.shape["model"]
  return jax.tree_util.tree_map_with_path(
      lambda path, leaf: NamedSharding(mesh, param_spec(path_name(path), leaf.shape,
                                                        axis_size, rules)), state)


def shard_params(state, mesh: Mesh, rules=DIT_RULES):
  """`state` placed on `mesh` by `rules` (every process must call it with the same values)."""
  return jax.device_put(state, param_shardings(state, mesh, rules))
