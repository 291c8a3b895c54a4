"""The built-in model families, registered in `remdm_jax.families` when `remdm_jax` is imported:
"dit", the library's own folders (`config.json` and `params/`, written by `save_model` or
`remdm-convert`: a `DiT` or its `NoisyClassifier`), "llada", released LLaDA folders
(`config.json` with `model_type` "llada" beside safetensors weights), and "maskgit", MaskGIT
image models (a released transformer checkpoint file, or a folder of it and its image
tokenizer).

Recognising a folder reads no weights and imports no orbax: the DiT's checkpoint code
(orbax) is imported when a DiT folder is read, not when the registry is consulted.
"""

from __future__ import annotations

import pathlib

from jax.sharding import PartitionSpec

from remdm_jax import families
from remdm_jax.denoiser import Denoiser
from remdm_jax.models import dit, llada, maskgit
from remdm_jax.models.classifier import NoisyClassifier
from remdm_jax.parallel.sharding import DIT_RULES, param_spec
from remdm_jax.text import char_tokenizer
from remdm_jax.text.hf_tokenizer import HFTokenizer
from remdm_jax.text.tokenizers import folder_tokenizer, get_tokenizer
from remdm_jax.models.patches import PatchCodebook
from remdm_jax.weights import llada_io, maskgit_io, msgpack_io


def _checkpoint():
  """`remdm_jax.weights.checkpoint`, imported when a DiT folder is read (it imports orbax)."""
  from remdm_jax.weights import checkpoint
  return checkpoint


class DiTFamily(families.Family):
  """The MDLM diffusion transformer and its noisy classifier, in the library's orbax folders."""

  name = "dit"
  config_type = dit.DiTConfig
  model_types = (dit.DiT, NoisyClassifier)

  def recognises(self, folder: pathlib.Path) -> bool:
    return (folder / "config.json").is_file() and (folder / "params").is_dir()

  def load(self, folder, *, dtype=None, mesh=None):
    return _checkpoint().load_dit(folder, dtype=dtype, mesh=mesh)

  def as_denoiser(self, model, schedule=None, *, label=None) -> Denoiser:
    if isinstance(model, NoisyClassifier):
      raise TypeError("a NoisyClassifier predicts classes, it is not a denoiser; use "
                      "remdm_jax.models.as_classifier for guidance")
    return dit.as_denoiser(model, schedule, label=label)

  def tokenizer_name(self, folder) -> str:
    return _checkpoint().load_tokenizer_name(folder)

  def tokenizer(self, folder):
    name = self.tokenizer_name(folder)
    if pathlib.Path(name).resolve() == pathlib.Path(folder).resolve():   # its own files
      return folder_tokenizer(name)
    return get_tokenizer(name)

  def max_length(self, model) -> int:
    return model.cfg.max_length

  def save(self, model, folder, *, tokenizer=None, step=None) -> None:
    _checkpoint().save_model(model, folder, tokenizer, step=step)

  def exported_step(self, folder) -> int | None:
    return _checkpoint().exported_step(folder)

  def param_spec(self, cfg, name, shape, axis_size) -> PartitionSpec:
    del cfg
    return param_spec(name, shape, axis_size, DIT_RULES)

  def check_sampling(self, folder, model, tokenizer) -> None:
    del tokenizer
    if not isinstance(model, dit.DiT):
      raise ValueError(f"{folder} is a classifier of noisy sequences; sampling needs a masked "
                       "diffusion model (a classifier serves D-CBG guidance)")
    if model.cfg.causal:
      raise ValueError(f"{folder} is a causal (autoregressive) model; sampling needs a masked "
                       "diffusion model (a causal one serves as the evaluator of remdm-merge)")


class LLaDAFamily(families.Family):
  """Released LLaDA folders (LLaDA-8B-Base / -Instruct), read one tensor at a time."""

  name = "llada"
  config_type = llada.LLaDAConfig
  model_types = (llada.LLaDA,)

  def recognises(self, folder: pathlib.Path) -> bool:
    return llada_io.is_llada_folder(folder)

  def load(self, folder, *, dtype=None, mesh=None):
    return llada_io.load_llada(folder, dtype=dtype, mesh=mesh)

  def as_denoiser(self, model, schedule=None, *, label=None) -> Denoiser:
    given = [name for name, value in (("schedule", schedule), ("label", label))
             if value is not None]
    if given:
      raise ValueError(f"{' and '.join(given)} do not apply to a LLaDA model (it reads no "
                       "time and has no classes)")
    return llada.as_denoiser(model)

  def tokenizer_name(self, folder) -> str:
    return str(pathlib.Path(folder).absolute())

  def tokenizer(self, folder):
    """The folder's character tokenizer (`char_tokenizer.json`, the task models), else its
    Hugging Face tokenizer (`tokenizer.json`, the released models)."""
    if (pathlib.Path(folder) / char_tokenizer.FILE).is_file():
      return char_tokenizer.CharTokenizer.from_folder(folder)
    return HFTokenizer(folder)

  def save(self, model, folder, *, tokenizer=None, step=None) -> None:
    llada_io.save_llada(model, folder, tokenizer=tokenizer, step=step)

  def exported_step(self, folder) -> int | None:
    return llada_io.saved_step(folder)

  def max_length(self, model) -> int:
    return model.cfg.max_sequence_length

  def param_spec(self, cfg, name, shape, axis_size) -> PartitionSpec:
    return llada_io.llada_param_spec(name, shape, axis_size, cfg.head_dim)

  def check_sampling(self, folder, model, tokenizer) -> None:
    if tokenizer.mask_id != model.cfg.mask_id:
      raise ValueError(f"{folder}: the tokenizer's mask id {tokenizer.mask_id} differs from "
                       f"the model's {model.cfg.mask_id} (config.json)")


class MaskGitFamily(families.Family):
  """MaskGIT's class-conditional image transformer: a released checkpoint file (the sizes from
  its shapes), or a folder holding it and its image tokenizer (`maskgit_io.read_manifest`)."""

  name = "maskgit"
  config_type = maskgit.MaskGitConfig
  model_types = (maskgit.MaskGit,)

  def recognises(self, folder: pathlib.Path) -> bool:
    return maskgit_io.is_maskgit_folder(folder)

  def recognises_file(self, path: pathlib.Path) -> bool:
    return msgpack_io.starts_like_variables(path)

  def load_file(self, path, *, dtype=None, mesh=None):
    _float32_only(path, dtype)
    model = maskgit_io.load_transformer(path)
    self.place(model, mesh)
    return model

  def load(self, folder, *, dtype=None, mesh=None):
    _float32_only(folder, dtype)
    model = maskgit_io.load_folder(folder)
    self.place(model, mesh)
    return model

  def as_denoiser(self, model, schedule=None, *, label=None) -> Denoiser:
    if schedule is not None:
      raise ValueError("schedule does not apply to a MaskGIT model (it reads no time)")
    return maskgit.as_denoiser(model, label=label)

  def tokenizer_name(self, folder) -> str:
    return str(pathlib.Path(folder).absolute())

  def tokenizer(self, folder):
    """The folder's image tokenizer (`decode_tokens(ids [B, T]) -> pixels [B, H, W, C]`)."""
    return maskgit_io.load_image_tokenizer(folder)

  def max_length(self, model) -> int:
    return model.cfg.seq_len

  def check_sampling(self, folder, model, tokenizer) -> None:
    del model, tokenizer
    raise ValueError(f"{folder} is an image model; sample it with remdm-images")

  def save(self, model, folder, *, tokenizer=None, step=None) -> None:
    if not isinstance(tokenizer, PatchCodebook):
      raise ValueError(f"a MaskGIT folder written here needs its image tokenizer, a "
                       f"PatchCodebook, got {type(tokenizer).__name__}")
    maskgit_io.save_folder(model, folder, tokenizer, step=step)

  def exported_step(self, folder) -> int | None:
    folder = pathlib.Path(folder)
    if not folder.is_dir() or not maskgit_io.is_maskgit_folder(folder):
      return None
    return maskgit_io.read_manifest(folder)["step"]


def _float32_only(path, dtype) -> None:
  if dtype not in (None, "float32"):
    raise ValueError(f"{path}: dtype applies to released LLaDA folders only; a MaskGIT model "
                     f"runs in float32, as released, got dtype={dtype!r}")


families.register(DiTFamily())
families.register(LLaDAFamily())
families.register(MaskGitFamily())
