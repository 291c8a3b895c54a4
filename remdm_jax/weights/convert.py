"""Import of the released MDLM PyTorch weights into the Flax DiT.

Sources:

- a Hugging Face style folder: `config.json` (hidden_dim, cond_dim, n_blocks, n_heads,
  vocab_size, model_length, time_conditioning) and `model.safetensors` with `backbone.` keys,
  read with the safetensors NumPy API (no torch needed);
- a Lightning `.ckpt` (needs torch): the EMA weights `ema.shadow_params`, matched to names by
  the parameter order of the checkpoint's own `state_dict`.

`convert_tensors` takes any `Mapping[str, np.ndarray]` for in-memory conversion. The command
line (`remdm_jax.cli.convert_main`)::

  remdm-convert SRC DST [--convert.released_config=CONFIG.json]
                        [--convert.allow_nonfinite=true]

Tensors holding NaN or infinity are refused (naming them and the count) unless
`allow_nonfinite` is set.
"""

from __future__ import annotations

import pathlib
import shutil
import sys
from typing import Mapping

import jax.numpy as jnp
import numpy as np
from flax import nnx

from remdm_jax import errors, files
from remdm_jax.parallel import locks
from remdm_jax.weights.checkpoint import save_model
from remdm_jax.models.dit import DiT, DiTConfig

_PREFIX = "backbone."
_INV_FREQ = "rotary_emb.inv_freq"


def released_names(cfg: DiTConfig) -> dict[str, tuple[tuple, bool]]:
  """Released key (without `backbone.`) -> (NNX parameter path, transpose?).

  A causal config has no `sigma_map` and no `adaLN_modulation` keys.
  """
  linear = lambda src, dst, bias=True: {
      f"{src}.weight": (dst + ("kernel",), True),
      **({f"{src}.bias": (dst + ("bias",), False)} if bias else {})}
  names = {"vocab_embed.embedding": (("vocab_embed", "embedding"), False)}
  if not cfg.causal:
    names |= linear("sigma_map.mlp.0", ("sigma_map", "mlp_0"))
    names |= linear("sigma_map.mlp.2", ("sigma_map", "mlp_2"))
  for i in range(cfg.blocks):
    b = f"blocks.{i}"
    names[f"{b}.norm1.weight"] = (("blocks", i, "norm1", "scale"), False)
    names[f"{b}.norm2.weight"] = (("blocks", i, "norm2", "scale"), False)
    names |= linear(f"{b}.attn_qkv", ("blocks", i, "attn_qkv"), bias=False)
    names |= linear(f"{b}.attn_out", ("blocks", i, "attn_out"), bias=False)
    names |= linear(f"{b}.mlp.0", ("blocks", i, "mlp_0"))
    names |= linear(f"{b}.mlp.2", ("blocks", i, "mlp_2"))
    if not cfg.causal:
      names |= linear(f"{b}.adaLN_modulation", ("blocks", i, "adaLN_modulation"))
  names["output_layer.norm_final.weight"] = (("norm_final", "scale"), False)
  names |= linear("output_layer.linear", ("output_linear",))
  if not cfg.causal:
    names |= linear("output_layer.adaLN_modulation", ("output_adaLN",))
  return names


def _check_inv_freq(value: np.ndarray, cfg: DiTConfig) -> None:
  """The rotary buffer must follow the formula, to the precision of its own dtype (a float16
  release rounds it to about 1e-3)."""
  head_dim = cfg.hidden // cfg.heads
  expected = 1.0 / 10_000.0 ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
  if value.shape != expected.shape:
    raise ValueError(f"{_PREFIX}{_INV_FREQ} has shape {list(value.shape)}, but heads="
                     f"{cfg.heads} and hidden={cfg.hidden} need {list(expected.shape)}: the "
                     "config does not fit these weights")
  rtol = max(1e-5, 4 * float(np.finfo(value.dtype).eps))
  if not np.allclose(value.astype(np.float64), expected, rtol=rtol):
    raise ValueError(f"{_PREFIX}{_INV_FREQ} ({value.dtype}) does not match the rotary "
                     f"formula 1 / 10000^(2k / {head_dim}) to rtol {rtol:.2g}")


def _check_finite(tensors: Mapping[str, np.ndarray]) -> None:
  """Raises naming every tensor holding NaN or infinity, with its count."""
  bad = {k: int(v.size - np.count_nonzero(np.isfinite(v))) for k, v in tensors.items()}
  bad = {k: n for k, n in bad.items() if n}
  if bad:
    shown = ", ".join(f"{_PREFIX}{k} ({n} of {tensors[k].size})" for k, n in
                      list(bad.items())[:3]) + (", ..." if len(bad) > 3 else "")
    raise ValueError(f"{len(bad)} checkpoint tensor(s) hold non-finite values (NaN or "
                     f"infinity): {shown}; the weights are damaged (convert anyway with "
                     "--convert.allow_nonfinite=true, allow_nonfinite=True)")


def convert_tensors(tensors: Mapping[str, np.ndarray], cfg: DiTConfig, *,
                    allow_nonfinite: bool = False) -> DiT:
  """Builds a `DiT` from released tensors (keys with or without `backbone.`).

  Args:
    allow_nonfinite: convert tensors holding NaN or infinity instead of refusing them.

  Raises:
    ValueError: one line naming the first missing, unknown or wrongly shaped key, or the
      tensors that hold non-finite values (with their counts).
  """
  tensors = {k.removeprefix(_PREFIX): np.asarray(v) for k, v in tensors.items()}
  floating = [k for k, v in tensors.items() if not np.issubdtype(v.dtype, np.floating)]
  if floating:
    raise ValueError(f"checkpoint tensors must be floating point; {_PREFIX}{floating[0]} is "
                     f"{tensors[floating[0]].dtype}")
  if not allow_nonfinite:
    _check_finite(tensors)
  if _INV_FREQ in tensors:
    _check_inv_freq(tensors.pop(_INV_FREQ), cfg)
  names = released_names(cfg)
  missing = [k for k in names if k not in tensors]
  unknown = [k for k in tensors if k not in names]
  if missing or unknown:
    raise ValueError(f"checkpoint keys do not match the config: missing {missing[:3]}"
                     f"{'...' if len(missing) > 3 else ''}, unknown {unknown[:3]}"
                     f"{'...' if len(unknown) > 3 else ''}")
  abstract = nnx.eval_shape(lambda: DiT(cfg, rngs=nnx.Rngs(0)))
  graphdef, state, rest = nnx.split(abstract, nnx.Param, ...)
  expected_shapes = {path: v.shape for path, v in nnx.to_flat_state(state)}
  pure = {}
  for key, (path, transpose) in names.items():
    value = tensors[key].T if transpose else tensors[key]
    if value.shape != expected_shapes[path]:
      shown = value.T.shape if transpose else value.shape
      want = expected_shapes[path][::-1] if transpose else expected_shapes[path]
      raise ValueError(f"{_PREFIX}{key} has shape {list(shown)}, the config needs "
                       f"{list(want)}")
    node = pure
    for part in path[:-1]:
      node = node.setdefault(part, {})
    node[path[-1]] = jnp.asarray(value, jnp.float32)
  nnx.replace_by_pure_dict(state, pure)
  return nnx.merge(graphdef, state, rest)


def config_from_hf(payload: Mapping) -> DiTConfig:
  """`DiTConfig` from a released Hugging Face `config.json`."""
  try:
    return DiTConfig(vocab_size=payload["vocab_size"], hidden=payload["hidden_dim"],
                     heads=payload["n_heads"], blocks=payload["n_blocks"],
                     cond_dim=payload["cond_dim"], max_length=payload["model_length"],
                     time_conditioning=bool(payload.get("time_conditioning", False)))
  except KeyError as err:
    raise ValueError(f"config.json lacks the field {err.args[0]!r}") from None
  except ValueError as err:
    raise ValueError(f"config.json: {err}") from None


def read_hf_folder(src) -> tuple[DiTConfig, dict[str, np.ndarray]]:
  """Reads `config.json` and `model.safetensors` from a folder."""
  from safetensors import SafetensorError
  from safetensors.numpy import load_file
  src = pathlib.Path(src)
  for name in ("config.json", "model.safetensors"):
    if not (src / name).is_file():
      raise ValueError(f"{src} is not a released MDLM folder: {name} is missing")
  cfg = config_from_hf(files.read_json_object(src / "config.json", "released config"))
  try:
    return cfg, load_file(str(src / "model.safetensors"))
  except (SafetensorError, OSError, ValueError) as err:
    raise ValueError(f"{src / 'model.safetensors'}: cannot read the weights (empty, "
                     f"truncated or not safetensors): {err}") from None


def _to_numpy(value) -> np.ndarray:
  if hasattr(value, "detach"):            # a torch tensor
    value = value.detach().cpu().float().numpy()
  return np.asarray(value, np.float32)


def ema_tensors(ckpt: Mapping) -> dict[str, np.ndarray]:
  """EMA weights of a loaded Lightning checkpoint dict, named by its `state_dict` order.

  `ema.shadow_params` follows `backbone.parameters()`, which is the order of the backbone's
  parameters in `state_dict` (buffers such as `rotary_emb.inv_freq` excluded).
  """
  state_dict, shadow = ckpt.get("state_dict"), (ckpt.get("ema") or {}).get("shadow_params")
  if state_dict is None or shadow is None:
    raise ValueError("the checkpoint has no state_dict or ema.shadow_params")
  names = [k for k in state_dict if k.startswith(_PREFIX) and not k.endswith(_INV_FREQ)]
  if len(shadow) < len(names):
    raise ValueError(f"{len(shadow)} EMA tensors for {len(names)} backbone parameters")
  tensors = {}
  for name, value in zip(names, shadow):
    if tuple(value.shape) != tuple(state_dict[name].shape):
      raise ValueError(f"EMA tensor for {name} has shape {list(value.shape)}, state_dict has "
                       f"{list(state_dict[name].shape)}")
    tensors[name] = _to_numpy(value)
  return tensors


def read_lightning_ckpt(path) -> dict[str, np.ndarray]:
  """Loads a Lightning `.ckpt` with torch and returns its EMA weights (`ema_tensors`)."""
  try:
    import torch
  except ImportError:
    raise ValueError("reading a Lightning .ckpt needs torch (pip install torch)") from None
  return ema_tensors(torch.load(str(path), map_location="cpu", weights_only=False))


def _read_source(src: pathlib.Path, config_json) -> tuple[DiTConfig, dict[str, np.ndarray]]:
  """The config and tensors of a released folder or a Lightning `.ckpt`."""
  if src.is_dir():
    if config_json is not None:
      raise ValueError(f"--convert.released_config={config_json} is only read for a Lightning "
                       f".ckpt source; {src} is a released folder, which uses its own "
                       "config.json: remove the flag")
    return read_hf_folder(src)
  if src.suffix == ".ckpt":
    if config_json is None:
      raise ValueError("a .ckpt needs --convert.released_config=FILE, the released config.json")
    cfg = config_from_hf(files.read_json_object(config_json, "released config"))
    return cfg, read_lightning_ckpt(src)
  if not src.exists():
    raise ValueError(f"{src}: no such file or folder")
  raise ValueError(f"SRC must be a released folder or a .ckpt file, got {src}")


def convert(src, dst, config_json=None, *, allow_nonfinite: bool = False) -> pathlib.Path:
  """Converts a released folder or `.ckpt` at `src` into a model folder at `dst`.

  `config_json` is the released config.json of a `.ckpt` source (a folder has its own; giving
  one for a folder is refused). `dst` is held by this run while it is written
  (`remdm_jax.parallel.locks`); a failed write leaves no temporary behind, and no `dst` it created.

  Raises:
    ValueError: a bad source, an option that does not apply, non-finite tensors (unless
      `allow_nonfinite`) or a `dst` that is a file or already holds a model.
    OSError: writing failed (a full disk, ...), naming the path.
  """
  src = pathlib.Path(src)
  cfg, tensors = _read_source(src, config_json)
  model = convert_tensors(tensors, cfg, allow_nonfinite=allow_nonfinite)
  dst = pathlib.Path(dst)
  if dst.exists() and not dst.is_dir():
    raise ValueError(f"{dst}: is a file, expected a new model folder")
  created = not dst.exists()
  dst = files.check_writable_folder(dst, "model")
  try:
    with locks.hold(dst, "model"):
      return save_model(model, dst, tokenizer="gpt2")
  except BaseException:
    if created:          # the folder is this run's own: nothing of anyone else's is in it
      shutil.rmtree(dst, ignore_errors=True)
    raise


if __name__ == "__main__":
  sys.exit(errors.not_a_command("remdm_jax.weights.convert",
                                "remdm-convert SRC DST (see remdm-convert --help)"))
