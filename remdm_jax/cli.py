"""Command-line helpers: dataclass configs from `--section.field=value` flags.

`parse_sections(argv, {"train": TrainConfig(), ...})` returns updated copies of the given
defaults. A `--config=FILE.json` holding `{"section": {"field": value}}` is applied first,
then the flags. Unknown sections or fields are errors listing the valid ones; values are
converted by the field's type.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import sys
import typing

import numpy as np

from remdm_jax import data, training
from remdm_jax.models.dit import DiTConfig


class UsageError(ValueError):
  """A bad flag, reported as one line with exit code 2."""


def _convert(value: str, kind, name: str):
  if kind in (bool, "bool"):
    if value.lower() not in ("true", "false", "1", "0"):
      raise UsageError(f"--{name} takes true or false, got {value!r}")
    return value.lower() in ("true", "1")
  if kind in (int, "int"):
    return int(value)
  if kind in (float, "float"):
    return float(value)
  if value.lower() == "none" and "None" in str(kind):
    return None
  return value


def parse_sections(argv: list[str], defaults: dict) -> tuple[dict, list[str]]:
  """Applies `--config` and `--section.field=value` flags; returns (configs, other args)."""
  values = {name: {} for name in defaults}
  rest, flags = [], []
  for arg in argv:
    if arg.startswith("--config="):
      payload = json.loads(pathlib.Path(arg.split("=", 1)[1]).read_text())
      for section, fields in payload.items():
        for field, value in fields.items():
          flags.append((section, field, value, False))
    elif arg.startswith("--") and "." in arg.split("=", 1)[0]:
      if "=" not in arg:
        raise UsageError(f"{arg} needs a value: {arg}=VALUE")
      key, value = arg[2:].split("=", 1)
      section, field = key.split(".", 1)
      flags.append((section, field, value, True))
    else:
      rest.append(arg)
  for section, field, value, from_text in flags:
    if section not in defaults:
      raise UsageError(f"unknown section {section!r}; choose from {sorted(defaults)}")
    fields = {f.name: f for f in dataclasses.fields(defaults[section])}
    if field not in fields:
      raise UsageError(f"unknown key {section}.{field}; valid keys: "
                       f"{', '.join(sorted(fields))}")
    kind = typing.get_type_hints(type(defaults[section])).get(field, fields[field].type)
    try:
      values[section][field] = _convert(value, kind, f"{section}.{field}") if from_text \
          else value
    except ValueError as err:
      raise UsageError(f"--{section}.{field}: {err}") from None
  return {name: dataclasses.replace(defaults[name], **values[name]) for name in defaults}, rest


TRAIN_DEFAULTS = {
    "model": DiTConfig(hidden=128, heads=4, blocks=4, cond_dim=64, max_length=256,
                       dropout=0.0),
    "train": training.TrainConfig(),
    "data": data.DataConfig(),
}


def train_main(argv: list[str] | None = None) -> int:
  """`remdm-train --workdir=DIR [--config=FILE] [--model.hidden=...] [--train.steps=...]`."""
  argv = sys.argv[1:] if argv is None else argv
  try:
    configs, rest = parse_sections(argv, TRAIN_DEFAULTS)
    workdir = [a.split("=", 1)[1] for a in rest if a.startswith("--workdir=")]
    if len(workdir) != 1 or len(rest) != 1:
      raise UsageError(f"pass exactly one --workdir=DIR; unexpected arguments: {rest}")
    data_cfg, train_cfg = configs["data"], configs["train"]
    tokenizer = data_cfg.make_tokenizer()
    model_cfg = dataclasses.replace(configs["model"], vocab_size=tokenizer.vocab_size,
                                    max_length=data_cfg.seq_len,
                                    causal=train_cfg.objective == "ar")
    train_rows, valid_rows = data_cfg.load_rows(tokenizer)
    stream = data.BatchStream(train_rows, train_cfg.batch_size, train_cfg.seed)
    record = {"model": dataclasses.asdict(model_cfg), "data": dataclasses.asdict(data_cfg),
              "train": {k: v for k, v in dataclasses.asdict(train_cfg).items()
                        if k != "steps"}}
    training.train(model_cfg, train_cfg, stream, valid_rows, tokenizer.mask_id, workdir[0],
                   record=record, tokenizer=data_cfg.tokenizer)
  except ValueError as err:
    print(f"error: {err}", file=sys.stderr)
    return 2
  return 0


SHIPPED_MODEL = pathlib.Path(__file__).resolve().parents[1] / "checkpoints" / "shakespeare-mdlm"


@dataclasses.dataclass(frozen=True)
class SampleJob:
  """What `remdm-sample` produces; sampler options live in `SamplerConfig` (`--sampler.*`)."""

  model: str = str(SHIPPED_MODEL)  # a model folder (trained, shipped or converted)
  num_samples: int = 4             # sequences to generate
  batch_size: int = 4              # sequences per jitted call (split over all devices)
  seed: int = 0                    # example i uses fold_in(key(seed), i)
  seq_len: int = 0                 # 0: the model's max_length
  prompt: str = ""                 # text placed after BOS in every sample
  prompt_file: str = ""            # one prompt per line, used in turn
  out: str = ""                    # JSON-lines output file (one record per sample)
  quiet: bool = False              # do not print the samples

  def __post_init__(self):
    for name in ("num_samples", "batch_size"):
      if getattr(self, name) < 1:
        raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
    if self.prompt and self.prompt_file:
      raise ValueError("pass either prompt or prompt_file, not both")


def _prompt_rows(job: SampleJob, tokenizer, seq_len: int) -> np.ndarray | None:
  """`[num_samples, seq_len] int32` templates (BOS, prompt ids, then masks), or None."""
  texts = [job.prompt] if job.prompt else []
  if job.prompt_file:
    texts = [l for l in pathlib.Path(job.prompt_file).read_text().splitlines() if l.strip()]
  if not texts:
    return None
  rows = np.full((job.num_samples, seq_len), tokenizer.mask_id, np.int32)
  for i in range(job.num_samples):
    ids = [tokenizer.bos_id] + tokenizer.encode(texts[i % len(texts)])
    if len(ids) > seq_len:
      raise ValueError(f"prompt needs {len(ids)} positions (BOS included), more than the "
                       f"sequence length {seq_len}")
    rows[i, :len(ids)] = ids
  return rows


def sample_main(argv: list[str] | None = None) -> int:
  """`remdm-sample [--sampler.FIELD=...] [--job.FIELD=...]`: text from a model folder."""
  import jax
  from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
  from tqdm import tqdm

  from remdm_jax.checkpoint import load_model, load_tokenizer_name
  from remdm_jax.config import SamplerConfig
  from remdm_jax.models.dit import as_denoiser
  from remdm_jax.sampling import sample
  from remdm_jax.tokenizers import get_tokenizer
  from flax import nnx

  argv = sys.argv[1:] if argv is None else argv
  try:
    configs, rest = parse_sections(argv, {"sampler": SamplerConfig(strategy="loop",
                                                                   num_steps=256, eta=0.02,
                                                                   top_p=0.9),
                                          "job": SampleJob()})
    if rest:
      raise UsageError(f"unexpected arguments {rest}; flags are --sampler.FIELD= and --job.FIELD=")
    cfg, job = configs["sampler"], configs["job"]
    model = load_model(job.model)
    tokenizer = get_tokenizer(load_tokenizer_name(job.model))
    if tokenizer.vocab_size != model.cfg.vocab_size:
      raise ValueError(f"tokenizer vocabulary {tokenizer.vocab_size} does not match the "
                       f"model's {model.cfg.vocab_size}")
    seq_len = job.seq_len or model.cfg.max_length
    if seq_len > model.cfg.max_length:
      raise ValueError(f"seq_len must be <= the model's max_length {model.cfg.max_length}, "
                       f"got {seq_len}")
    prompts = _prompt_rows(job, tokenizer, seq_len)
  except ValueError as err:
    print(f"error: {err}", file=sys.stderr)
    return 2
  graphdef, state = nnx.split(model)
  devices = jax.devices()
  sharding = (NamedSharding(Mesh(np.array(devices), ("data",)), P("data"))
              if job.batch_size % len(devices) == 0 else None)

  @jax.jit
  def run(key, state, prompt, first):
    return sample(key, as_denoiser(nnx.merge(graphdef, state)), cfg, batch_size=job.batch_size,
                  seq_len=seq_len, mask_id=tokenizer.mask_id, prompt=prompt,
                  first_index=first, batch_sharding=sharding)

  key = jax.random.key(job.seed)
  out = pathlib.Path(job.out).open("w") if job.out else None
  try:
    for first in tqdm(range(0, job.num_samples, job.batch_size), desc="sample", unit="batch"):
      prompt = None
      if prompts is not None:
        block = prompts[first:first + job.batch_size]
        prompt = np.concatenate([block, prompts[:job.batch_size - len(block)]])
      tokens = np.asarray(run(key, state, prompt, first))
      for i in range(min(job.batch_size, job.num_samples - first)):
        text = tokenizer.decode(tokens[i])
        record = {"index": first + i, "seed": job.seed, "text": text,
                  "ids": tokens[i].tolist(), "settings": dataclasses.asdict(cfg),
                  "model": job.model}
        if out:
          out.write(json.dumps(record) + "\n")
        if not job.quiet:
          print(f"--- sample {first + i} ---\n{text}")
  finally:
    if out:
      out.close()
  return 0
