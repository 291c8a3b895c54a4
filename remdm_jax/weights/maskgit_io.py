"""MaskGIT checkpoints as released (github.com/google-research/maskgit): one flax msgpack file
for the transformer and one for the VQGAN tokenizer, each `{"params": {...}}` in the official
linen modules' names, read into the NNX models (`remdm_jax.models.maskgit`, `.vqgan`).

The sizes come from the parameter shapes (no config file is needed): the width, depth, heads,
MLP width and positions of the transformer, and the levels, widths and blocks of the decoder.
The codebook size cannot be told apart from the class count in the transformer's vocabulary
(`V = K + C + 1`): it defaults to the released 1024, and C to `V - 1025` (1000 for the released
models). The whole tree is checked against the shapes those sizes need (and for NaN or
infinity) before any weight is used, and a broken file is refused in one line naming the
parameter. The tokenizer's encoder
is not read (only `decode_from_indices` is needed to sample).

A MaskGIT folder holds the two files: the released names (`maskgit_imagenet256_checkpoint` and
`tokenizer_imagenet256_checkpoint`), or a `maskgit.json` naming them (the layout `save_folder`
writes, for models trained here, whose image tokenizer may be a `PatchCodebook`).
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import re

import jax.numpy as jnp
from flax import nnx

from remdm_jax import files
from remdm_jax.models.patches import PatchCodebook
from remdm_jax.models.maskgit import MaskGit, MaskGitConfig
from remdm_jax.models.vqgan import VQGANDecoder, VQGANDecoderConfig
from remdm_jax.validation import check_range
from remdm_jax.weights import msgpack_io

MANIFEST = "maskgit.json"
TRANSFORMER_FILE = "transformer.msgpack"
RELEASED_TRANSFORMER = re.compile(r"maskgit_.*checkpoint$")
RELEASED_TOKENIZER = "tokenizer_{}checkpoint"      # the transformer's name's middle part
DEFAULT_CODEBOOK = 1024


def transformer_names(cfg: MaskGitConfig) -> dict[str, str]:
  """`{NNX parameter path: official msgpack path}` of a transformer of `cfg`."""
  embed, mlm = "params/Embed_0/", "params/MlmLayer_0/"
  names = {"word_embeddings": embed + "word_embeddings/embedding",
           "position_embeddings": embed + "position_embeddings/embedding",
           "mlm_bias": mlm + "mlm_bias/bias"}
  pairs = {"embeddings_ln": embed + "embeddings_ln", "mlm_ln": mlm + "mlm_ln",
           "mlm_dense": mlm + "mlm_dense"}
  for i in range(cfg.num_layers):
    layer = f"params/TransformerLayer_{i}/"
    pairs |= {f"layers/{i}/attention_ln": layer + "Attention_0/attention_output_ln",
              f"layers/{i}/intermediate": layer + "Mlp_0/intermediate_output",
              f"layers/{i}/output": layer + "Mlp_0/layer_output",
              f"layers/{i}/output_ln": layer + "Mlp_0/layer_output_ln"}
    for part in ("query", "key", "value", "out"):
      for leaf in ("kernel", "bias"):
        names[f"layers/{i}/attention/{part}_{leaf}"] = (
            f"{layer}Attention_0/self_attention/{part}/{leaf}")
  for ours, theirs in pairs.items():
    leaves = ("scale", "bias") if ours.endswith("ln") else ("kernel", "bias")
    names |= {f"{ours}/{leaf}": f"{theirs}/{leaf}" for leaf in leaves}
  return names


def decoder_names(cfg: VQGANDecoderConfig) -> dict[str, str]:
  """`{NNX parameter path: official msgpack path}` of a VQGAN decoder of `cfg`."""
  levels, dec = len(cfg.widths), "params/decoder/"
  names = {"codebook": "params/quantizer/codebook"}
  convs = {"conv_in": 0, **{f"ups/{j}": j + 1 for j in range(levels - 1)}, "conv_out": levels}
  for ours, index in convs.items():
    names |= {f"{ours}/{leaf}": f"{dec}Conv_{index}/{leaf}" for leaf in ("kernel", "bias")}
  names |= {f"norm_out/{leaf}": f"{dec}GroupNorm_0/{leaf}" for leaf in ("scale", "bias")}
  per = cfg.num_res_blocks
  widths = [cfg.widths[-1]] * per + [w for w in reversed(cfg.widths) for _ in range(per)]
  for j, width in enumerate(widths):
    block, cin = f"{dec}ResBlock_{j}/", widths[max(j - 1, 0)]
    parts = {"norm0": "GroupNorm_0", "conv0": "Conv_0", "norm1": "GroupNorm_1",
             "conv1": "Conv_1", **({"shortcut": "Conv_2"} if cin != width else {})}
    for ours, theirs in parts.items():
      leaves = ("scale", "bias") if ours.startswith("norm") else ("kernel",)
      names |= {f"blocks/{j}/{ours}/{leaf}": f"{block}{theirs}/{leaf}" for leaf in leaves}
  return names


def _shape(flat: dict, name: str, where, rank: int) -> tuple[int, ...]:
  """The shape of parameter `name`, which must exist and have `rank` axes."""
  if name not in flat or not hasattr(flat[name], "shape"):
    raise ValueError(f"{where}: parameter {name} is missing")
  if len(flat[name].shape) != rank:
    raise ValueError(f"{where}: parameter {name} must have {rank} axes, got shape "
                     f"{list(flat[name].shape)}")
  return tuple(flat[name].shape)


def _config(cls, where, **sizes):
  """`cls(**sizes)`, its refusal naming the file."""
  try:
    return cls(**sizes)
  except ValueError as err:
    raise ValueError(f"{where}: sizes read from the shapes do not make a model ({err})") from None


def transformer_config(flat: dict, where, codebook_size: int = DEFAULT_CODEBOOK,
                       num_classes: int | None = None) -> MaskGitConfig:
  """The `MaskGitConfig` of an official transformer tree (flattened), sizes from the shapes.

  Raises:
    ValueError: a parameter the sizes are read from is missing or of another rank, or the
      vocabulary is too small for `codebook_size` (naming the file).
  """
  vocab, hidden = _shape(flat, "params/Embed_0/word_embeddings/embedding", where, 2)
  positions = _shape(flat, "params/Embed_0/position_embeddings/embedding", where, 2)[0]
  layers = len({m.group(1) for name in flat
                if (m := re.match(r"params/TransformerLayer_(\d+)/", name))})
  if layers < 1:
    raise ValueError(f"{where}: parameter params/TransformerLayer_0 is missing")
  heads = _shape(flat, "params/TransformerLayer_0/Attention_0/self_attention/query/kernel",
                 where, 3)[1]
  inner = _shape(flat, "params/TransformerLayer_0/Mlp_0/intermediate_output/kernel", where,
                 2)[1]
  classes = vocab - 1 - codebook_size if num_classes is None else num_classes
  if classes < 1 or codebook_size + classes + 1 != vocab:
    raise ValueError(f"{where}: a vocabulary of {vocab} ids cannot hold codebook_size="
                     f"{codebook_size} codes, {classes} classes and the mask (V = K + C + 1)")
  return _config(MaskGitConfig, where, codebook_size=codebook_size, num_classes=classes,
                 num_tokens=positions - 1, hidden_size=hidden, num_layers=layers,
                 num_heads=heads, intermediate_size=inner)


def decoder_config(flat: dict, where) -> VQGANDecoderConfig:
  """The `VQGANDecoderConfig` of an official tokenizer tree (flattened), from the shapes.

  Raises:
    ValueError: parameters the sizes are read from are missing, or the counts do not fit.
  """
  codes, dim = _shape(flat, "params/quantizer/codebook", where, 2)
  convs = len({n.split("/")[2] for n in flat if re.match(r"params/decoder/Conv_\d+/", n)})
  blocks = len({n.split("/")[2] for n in flat if re.match(r"params/decoder/ResBlock_\d+/", n)})
  levels = convs - 1
  if levels < 1 or blocks % (levels + 1) or not blocks:
    raise ValueError(f"{where}: {convs} decoder convolutions and {blocks} residual blocks do "
                     "not form a VQGAN decoder")
  per = blocks // (levels + 1)
  widths = tuple(_shape(flat, f"params/decoder/ResBlock_{per * (levels - i)}/Conv_1/kernel",
                        where, 4)[3] for i in range(levels))
  output = _shape(flat, f"params/decoder/Conv_{levels}/kernel", where, 4)[3]
  return _config(VQGANDecoderConfig, where, codebook_size=codes, embedding_dim=dim,
                 widths=widths, num_res_blocks=per, output_dim=output)


def _read_into(build, names: dict[str, str], flat: dict, where):
  """The model `build()` makes (built abstractly), its parameters read from `flat` (official
  names) after the whole tree is checked against its shapes."""
  graphdef, state = nnx.split(nnx.eval_shape(build))
  leaves = [("/".join(map(str, path)), path, variable)
            for path, variable in nnx.to_flat_state(state)]
  msgpack_io.check_shapes(flat, {names[name]: tuple(variable.get_value().shape)
                                 for name, _, variable in leaves}, where)
  placed = [(path, variable.replace(jnp.asarray(flat[names[name]], jnp.float32)))
            for name, path, variable in leaves]
  return nnx.merge(graphdef, nnx.from_flat_state(placed))


def load_transformer(path, *, codebook_size: int = DEFAULT_CODEBOOK,
                     num_classes: int | None = None) -> MaskGit:
  """A released (or `save_transformer`-written) MaskGIT transformer file as a `MaskGit`
  (float32, as released).

  Raises:
    ValueError: an unreadable file, or a tree or shape it cannot be (naming the parameter).
  """
  where = pathlib.Path(path).absolute()
  check_range("codebook_size", codebook_size, 1)
  flat = msgpack_io.flatten(msgpack_io.read_variables(path, "MaskGIT transformer checkpoint"))
  cfg = transformer_config(flat, where, codebook_size, num_classes)
  return _read_into(lambda: MaskGit(cfg, rngs=nnx.Rngs(0)), transformer_names(cfg), flat, where)


def load_decoder(path) -> VQGANDecoder:
  """The decoder (and codebook) of a released VQGAN tokenizer file; the encoder is ignored.

  Raises:
    ValueError: an unreadable file, or a tree or shape it cannot be (naming the parameter).
  """
  where = pathlib.Path(path).absolute()
  flat = msgpack_io.flatten(msgpack_io.read_variables(path, "VQGAN tokenizer checkpoint"))
  flat = {k: v for k, v in flat.items()
          if k.startswith("params/decoder/") or k == "params/quantizer/codebook"}
  cfg = decoder_config(flat, where)
  return _read_into(lambda: VQGANDecoder(cfg, rngs=nnx.Rngs(0)), decoder_names(cfg), flat, where)


def official_tree(model: MaskGit | VQGANDecoder) -> dict:
  """The model's parameters as the official nested tree `{"params": {...}}` (NumPy)."""
  names = (transformer_names(model.cfg) if isinstance(model, MaskGit)
           else decoder_names(model.cfg))
  ours = msgpack_io.flatten(nnx.to_pure_dict(nnx.state(model, nnx.Param)))
  return msgpack_io.unflatten({names[k]: v for k, v in ours.items()})


def save_transformer(model: MaskGit, path) -> None:
  """Writes the transformer in the released format (a flax msgpack of the official tree)."""
  msgpack_io.write_variables(path, official_tree(model))


def _released_transformer(folder: pathlib.Path) -> pathlib.Path | None:
  found = sorted(p for p in folder.iterdir() if RELEASED_TRANSFORMER.match(p.name) and p.is_file())
  return found[0] if found else None


def is_maskgit_folder(folder: pathlib.Path) -> bool:
  """A folder with `maskgit.json`, or a released `maskgit_*checkpoint` file (no weights read)."""
  return (folder / MANIFEST).is_file() or _released_transformer(folder) is not None


def _inside(folder: pathlib.Path, name, what: str) -> pathlib.Path:
  """`folder / name` for a plain file name whose file (links followed) lies in the folder."""
  if (not isinstance(name, str) or not name or pathlib.PurePath(name).name != name
      or name in (".", "..") or (folder / name).resolve().parent != folder.resolve()):
    raise ValueError(f"{folder / MANIFEST}: {what} must be a file name inside the folder, got "
                     f"{name!r}")
  return folder / name


def read_manifest(folder) -> dict:
  """The folder's description: `{"transformer": path, "codebook_size", "num_classes",
  "null_class", "tokenizer": ("patches", folder) or ("vqgan", path), "step"}`. A released
  folder (no `maskgit.json`) gets the released sizes and its `tokenizer_*checkpoint`.

  Raises:
    ValueError: a malformed manifest, or a name pointing outside the folder.
  """
  folder = pathlib.Path(folder)
  if not (folder / MANIFEST).is_file():
    transformer = _released_transformer(folder)
    if transformer is None:
      raise ValueError(f"{folder.absolute()}: no {MANIFEST} and no maskgit_*checkpoint file")
    middle = transformer.name[len("maskgit_"):-len("checkpoint")]
    return {"transformer": transformer, "codebook_size": DEFAULT_CODEBOOK, "num_classes": None,
            "null_class": None, "step": None,
            "tokenizer": ("vqgan", folder / RELEASED_TOKENIZER.format(middle))}
  record = files.read_json_object(folder / MANIFEST, "MaskGIT manifest")
  kind = record.get("image_tokenizer")
  if kind not in ("patches", "vqgan"):
    raise ValueError(f"{folder / MANIFEST}: image_tokenizer must be 'patches' or 'vqgan', got "
                     f"{kind!r}")
  tokenizer = (("patches", folder) if kind == "patches" else
               ("vqgan", _inside(folder, record.get("tokenizer_file"), "tokenizer_file")))
  sizes = {}
  for name in ("codebook_size", "num_classes", "null_class", "step"):
    value = record.get(name)
    if (value is None and name == "codebook_size") or (value is not None and (
        not isinstance(value, int) or isinstance(value, bool))):
      raise ValueError(f"{folder / MANIFEST}: {name} must be an integer, got {value!r}")
    sizes[name] = value
  return {"transformer": _inside(folder, record.get("transformer"), "transformer"),
          "tokenizer": tokenizer, **sizes}


def load_folder(folder) -> MaskGit:
  """The transformer of a MaskGIT folder (`read_manifest`), its null class recorded."""
  manifest = read_manifest(folder)
  model = load_transformer(manifest["transformer"], codebook_size=manifest["codebook_size"],
                           num_classes=manifest["num_classes"])
  if manifest["null_class"] is not None:
    model.cfg = dataclasses.replace(model.cfg, null_class=manifest["null_class"])
  return model


def load_image_tokenizer(folder):
  """The folder's image tokenizer: a `PatchCodebook` or a `VQGANDecoder`, each with
  `decode_tokens(ids [B, T]) -> pixels [B, H, W, C]` float32 in [0, 1]."""
  kind, where = read_manifest(folder)["tokenizer"]
  return PatchCodebook.load(where) if kind == "patches" else load_decoder(where)


def check_fit(cfg: MaskGitConfig, tokenizer, where) -> None:
  """Refuses an image tokenizer whose codebook (or, for a patch codebook, tokens per image)
  differs from the transformer's, naming the folder.

  Raises:
    ValueError: the sizes differ.
  """
  codes = (tokenizer.codebook_size if isinstance(tokenizer, PatchCodebook)
           else tokenizer.cfg.codebook_size)
  tokens = tokenizer.num_tokens if isinstance(tokenizer, PatchCodebook) else cfg.num_tokens
  if (codes, tokens) != (cfg.codebook_size, cfg.num_tokens):
    raise ValueError(f"{where}: the image tokenizer has {codes} codes and {tokens} tokens per "
                     f"image, the transformer {cfg.codebook_size} and {cfg.num_tokens}")


def save_folder(model: MaskGit, folder, codebook: PatchCodebook, *, step: int | None = None
                ) -> None:
  """Writes a MaskGIT folder of a model trained here: `transformer.msgpack` (the released
  format), the patch codebook and `maskgit.json` (sizes, null class, step)."""
  folder = pathlib.Path(folder)
  folder.mkdir(parents=True, exist_ok=True)
  save_transformer(model, folder / TRANSFORMER_FILE)
  codebook.save(folder)
  cfg = model.cfg
  files.write_atomic(folder / MANIFEST, json.dumps(
      {"transformer": TRANSFORMER_FILE, "image_tokenizer": "patches",
       "codebook_size": cfg.codebook_size, "num_classes": cfg.num_classes,
       "null_class": cfg.null_class, "step": step}, indent=1) + "\n")
