"""Command-line helpers: dataclass configs from `--section.field=value` flags.

`parse_sections(argv, {"train": TrainConfig(), ...})` returns updated copies of the given
defaults. A `--config=FILE.json` holding `{"section": {"field": value}}` is applied first,
then the flags. Unknown sections or fields are errors listing the valid ones; values are
converted by the field's type and checked by the config itself. `-h` / `--help` prints every
field with its default and meaning. Errors end the command through `errors.run_cli`.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import pathlib
import re
import sys
import time
import typing

import numpy as np

from remdm_jax import data, distributed, files, training
from remdm_jax.config import SamplerConfig
from remdm_jax.errors import HelpRequested, run_cli
from remdm_jax.models.dit import DiTConfig
from remdm_jax.validation import check_fields, check_range


class UsageError(ValueError):
  """A bad flag, reported as one line with exit code 2."""


_KIND_WORDS = {int: "an integer", float: "a number"}


def _convert(value: str, kind, name: str):
  if kind in (bool, "bool"):
    if value.lower() not in ("true", "false", "1", "0"):
      raise UsageError(f"--{name} takes true or false, got {value!r}")
    return value.lower() in ("true", "1")
  if kind in _KIND_WORDS:
    try:
      return kind(value)
    except ValueError:
      raise UsageError(f"--{name} takes {_KIND_WORDS[kind]}, got {value!r}") from None
  if value.lower() == "none" and "None" in str(kind):
    return None
  return value


def _config_file_flags(path: str) -> list[tuple]:
  """`(section, field, value, False)` for every entry of a `--config` JSON file."""
  payload = files.read_json_object(path, "config file")
  flags = []
  for section, fields in payload.items():
    if not isinstance(fields, dict):
      raise UsageError(f"{path}: section {section!r} must be an object of fields, got "
                       f"{type(fields).__name__}")
    flags.extend((section, field, value, False) for field, value in fields.items())
  return flags


def parse_sections(argv: list[str], defaults: dict,
                   arguments: str = "") -> tuple[dict, list[str]]:
  """Applies `--config` and `--section.field=value` flags; returns (configs, other args).

  Raises:
    HelpRequested: `-h` or `--help` was given (its text lists every field).
    UsageError / ValueError: an unknown or malformed flag, or a value the config refuses.
  """
  if "-h" in argv or "--help" in argv:
    raise HelpRequested(usage(defaults, arguments))
  values = {name: {} for name in defaults}
  rest, flags = [], []
  for arg in argv:
    if arg.startswith("--config="):
      flags.extend(_config_file_flags(arg.split("=", 1)[1]))
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
    values[section][field] = _convert(value, kind, f"{section}.{field}") if from_text \
        else value
  return {name: dataclasses.replace(defaults[name], **values[name]) for name in defaults}, rest


def _field_comments(cls) -> dict[str, str]:
  """The `# comment` after each field of a dataclass's source (continuation lines joined)."""
  comments, last = {}, None
  for line in inspect.getsource(cls).splitlines():
    field = re.match(r"\s+(\w+)\s*:[^=]*=.*?#\s?(.*)$", line)
    more = re.match(r"\s+#\s?(.*)$", line)
    if field:
      last = field.group(1)
      comments[last] = field.group(2).strip()
    elif more and last:
      comments[last] += " " + more.group(1).strip()
    elif line.strip():
      last = None
  return comments


def usage(defaults: dict, arguments: str = "") -> str:
  """Every `--section.field=DEFAULT` with its meaning, section by section."""
  lines = [f"usage: {pathlib.Path(sys.argv[0]).name} {arguments}[--config=FILE.json] "
           "[--SECTION.FIELD=VALUE ...]",
           "--config: a JSON object {section: {field: value}}, applied before the flags."]
  for section, config in defaults.items():
    lines.append(f"\n{section} ({type(config).__name__}):")
    comments = _field_comments(type(config))
    for field in dataclasses.fields(config):
      flag = f"  --{section}.{field.name}={json.dumps(getattr(config, field.name))}"
      lines.append(f"{flag:<44} {comments.get(field.name, '')}".rstrip())
  return "\n".join(lines)


TRAIN_DEFAULTS = {
    "model": DiTConfig(hidden=128, heads=4, blocks=4, cond_dim=64, max_length=256,
                       dropout=0.0),
    "train": training.TrainConfig(),
    "data": data.DataConfig(),
    "dist": distributed.DistributedConfig(),
}


def _train(argv: list[str]) -> int:
  configs, rest = parse_sections(argv, TRAIN_DEFAULTS, "--workdir=DIR ")
  workdir = [a.split("=", 1)[1] for a in rest if a.startswith("--workdir=")]
  if len(workdir) != 1 or len(rest) != 1 or not workdir[0]:
    raise UsageError(f"pass exactly one --workdir=DIR; unexpected arguments: {rest}")
  files.check_writable_folder(workdir[0], "workdir")
  distributed.initialize(configs["dist"])
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
  return 0


def train_main(argv: list[str] | None = None) -> int:
  """`remdm-train --workdir=DIR [--config=FILE] [--model.* --train.* --data.* --dist.*]`."""
  return run_cli(_train, sys.argv[1:] if argv is None else argv)


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
  out: str = ""                    # job directory: manifest + atomic JSON-lines shards
  model_axis: int = 1              # devices sharing each parameter shard (tensor parallel)
  quiet: bool = False              # do not print the samples

  def __post_init__(self):
    check_fields(self)
    for name in ("num_samples", "batch_size", "model_axis"):
      check_range(name, getattr(self, name), 1)
    check_range("seed", self.seed, 0)
    check_range("seq_len", self.seq_len, 0)
    if self.prompt and self.prompt_file:
      raise ValueError("pass either prompt or prompt_file, not both")


def _prompt_texts(job: SampleJob) -> list[str]:
  if job.prompt_file:
    texts = [l for l in files.read_text(job.prompt_file, "prompt file").splitlines()
             if l.strip()]
    if not texts:
      raise ValueError(f"{job.prompt_file}: the prompt file holds no prompt (no non-blank "
                       "line)")
    return texts
  return [job.prompt] if job.prompt else []


def _prompt_rows(texts: list[str], num_rows: int, tokenizer, seq_len: int) -> np.ndarray | None:
  """`[num_rows, seq_len] int32` templates (BOS, prompt ids, then masks), or None."""
  if not texts:
    return None
  rows = np.full((num_rows, seq_len), tokenizer.mask_id, np.int32)
  for i in range(num_rows):
    ids = [tokenizer.bos_id] + tokenizer.encode(texts[i % len(texts)])
    if len(ids) > seq_len:
      raise ValueError(f"prompt needs {len(ids)} positions (BOS included), more than the "
                       f"sequence length {seq_len}")
    rows[i, :len(ids)] = ids
  return rows


SAMPLE_SECTIONS = {
    "sampler": SamplerConfig(strategy="loop", num_steps=256, eta=0.02, top_p=0.9),
    "job": SampleJob(),
    "dist": distributed.DistributedConfig(),
}


def _sample(argv: list[str]) -> int:
  configs, rest = parse_sections(argv, SAMPLE_SECTIONS)
  if rest:
    raise UsageError(f"unexpected arguments {rest}; flags are --sampler.FIELD=, "
                     "--job.FIELD= and --dist.FIELD= (--help lists them)")
  distributed.initialize(configs["dist"])
  return _run_sampling(configs["sampler"], configs["job"])


def sample_main(argv: list[str] | None = None) -> int:
  """`remdm-sample [--sampler.FIELD=...] [--job.FIELD=...] [--dist.FIELD=...]`."""
  return run_cli(_sample, sys.argv[1:] if argv is None else argv)


def _load_sampling_model(job: SampleJob):
  """The model and tokenizer of `job.model`, checked to fit each other and the job."""
  from remdm_jax.checkpoint import load_model, load_tokenizer_name
  from remdm_jax.tokenizers import get_tokenizer
  model = load_model(job.model)
  if model.cfg.causal:
    raise ValueError(f"{job.model} is a causal (autoregressive) model; remdm-sample needs a "
                     "masked diffusion model (a causal one serves as --evaluator of "
                     "remdm-merge)")
  tokenizer_name = load_tokenizer_name(job.model)
  tokenizer = get_tokenizer(tokenizer_name)
  if tokenizer.vocab_size != model.cfg.vocab_size:
    raise ValueError(f"tokenizer vocabulary {tokenizer.vocab_size} does not match the "
                     f"model's {model.cfg.vocab_size}")
  return model, tokenizer, tokenizer_name


def _run_sampling(cfg: SamplerConfig, job: SampleJob) -> int:
  """Checks everything and compiles the sampler, then (only then) opens the job folder and
  writes its shards; a batch with non-finite logits stops the job before it is written."""
  import jax
  from flax import nnx
  from jax.sharding import NamedSharding, PartitionSpec as P
  from tqdm import tqdm

  from remdm_jax import jobs, sharding
  from remdm_jax.models.dit import as_denoiser
  from remdm_jax.sampling import NonFiniteLogitsError, nonfinite_message, sample

  if job.out:
    files.check_writable_folder(job.out, "job")
  model, tokenizer, tokenizer_name = _load_sampling_model(job)
  seq_len = job.seq_len or model.cfg.max_length
  check_range("seq_len", seq_len, 1, model.cfg.max_length,
              context=" (the model's max_length)")
  texts = _prompt_texts(job)
  prompts = _prompt_rows(texts, job.num_samples, tokenizer, seq_len)
  mesh = distributed.make_mesh(job.model_axis)
  data_devices = mesh.shape["data"]
  batch_sharding = distributed.batch_sharding(mesh)
  if job.batch_size % data_devices:
    if jax.process_count() > 1:
      raise ValueError(f"batch_size must be a multiple of the {data_devices} data-parallel "
                       f"devices with several processes, got {job.batch_size}")
    batch_sharding = None
  graphdef, state = nnx.split(model)
  state = sharding.shard_params(state, mesh)

  def run(key, state, prompt, first):
    tokens, nonfinite = sample(
        key, as_denoiser(nnx.merge(graphdef, state)), cfg, batch_size=job.batch_size,
        seq_len=seq_len, mask_id=tokenizer.mask_id, prompt=prompt, first_index=first,
        batch_sharding=batch_sharding, return_nonfinite=True)
    return tokens, jax.lax.with_sharding_constraint(nonfinite, NamedSharding(mesh, P()))

  def prompt_block(first):
    if prompts is None:
      return None
    block = np.resize(prompts[first:first + job.batch_size], (job.batch_size, seq_len))
    return block if batch_sharding is None else distributed.put_global(block, batch_sharding)

  key = jax.random.key(job.seed)
  run = jax.jit(run).lower(key, state, prompt_block(0), np.int32(0)).compile()
  directory = None
  if job.out:
    directory = jobs.open_job(job.out, {
        "model": job.model, "model_config": dataclasses.asdict(model.cfg),
        "tokenizer": tokenizer_name, "sampler": dataclasses.asdict(cfg),
        "num_samples": job.num_samples, "batch_size": job.batch_size, "seed": job.seed,
        "seq_len": seq_len, "prompts": texts, "process_count": jax.process_count(),
        "device_count": jax.device_count(), "model_axis": job.model_axis})
  local_ranges = (distributed.local_row_ranges(batch_sharding, (job.batch_size, seq_len))
                  if batch_sharding else [(0, job.batch_size)])
  done = set(jobs.finished_shards(directory)) if directory else set()
  throughput = jobs.Throughput(seq_len)
  settings = dataclasses.asdict(cfg)
  show = not job.quiet and distributed.is_primary()
  bar = tqdm(range(0, job.num_samples, job.batch_size), desc="sample", unit="batch",
             disable=not distributed.is_primary())
  for first in bar:
    wanted = [(first + a, min(first + b, job.num_samples)) for a, b in local_ranges
              if first + a < job.num_samples]
    if directory and distributed.all_processes(all(r in done for r in wanted)):
      continue
    tic = time.perf_counter()
    tokens, nonfinite = run(key, state, prompt_block(first), np.int32(first))
    real = min(job.batch_size, job.num_samples - first)
    flags = np.asarray(nonfinite)[:real]
    if flags.any():
      bar.close()
      raise NonFiniteLogitsError(f"model {job.model}: {nonfinite_message(flags, first)}; "
                                 "nothing of this batch was written")
    blocks = distributed.local_row_blocks(tokens)
    throughput.add(real, time.perf_counter() - tic)
    for start, rows in blocks:
      records = [_record(first + start + i, row, tokenizer, settings, job)
                 for i, row in enumerate(rows) if first + start + i < job.num_samples]
      if directory and records:
        files.write_atomic(jobs.shard_path(directory, records[0]["index"],
                                           records[-1]["index"] + 1), jobs.shard_text(records))
      for record in records if show else []:
        print(f"--- sample {record['index']} ---\n{record['text']}")
    bar.set_postfix(throughput.summary())
  if distributed.is_primary():
    print(f"throughput: {json.dumps(throughput.summary())}", file=sys.stderr)
  return 0


def _record(index: int, row: np.ndarray, tokenizer, settings: dict, job: SampleJob) -> dict:
  return {"index": index, "seed": job.seed, "text": tokenizer.decode(row), "ids": row.tolist(),
          "settings": settings, "model": job.model}
