"""The command lines, one style for all: dataclass configs from `--section.field=value` flags.

`parse_sections(argv, {"train": TrainConfig(), ...})` returns updated copies of the given
defaults. A `--config=FILE.json` holding `{"section": {"field": value}}` is applied first,
then the flags. Unknown sections or fields are errors listing the valid ones; values are
converted by the field's type and checked by the config itself. A section whose config
holds a registered choice (`CHOICE`, `remdm_jax.registry`) takes it flat: the strategy
(`--sampler.strategy=cap --sampler.eta=0.01`), the objective (`--train.objective=remdm
--train.eta=0.5`) or the guidance (`--guidance.kind=cfg --guidance.gamma=2`), with the
choice's own options beside the config's; a new choice starts from its own defaults, and an
option it does not have is an error naming the choices that have it. Fields a command sets
itself (`fixed`) are refused by name. `-h` / `--help` prints every field with its default and
meaning (the field's `help` metadata, `validation.option`; no source file is read), and
`--help=SECTION` one section's. Positional arguments are folders (`remdm-merge DIR`). Errors
end the command through `errors.run_cli`. The commands parse, then call the library
(`jobs.run_sampling_job`, `training.train`, `shards.merge`, `convert.convert`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import sys
import typing

from remdm_jax import files, guidance
from remdm_jax.weights import checkpoint
from remdm_jax.parallel import distributed
from remdm_jax.jobs import sample_job as jobs
from remdm_jax.parallel import locks
from remdm_jax.jobs import shards
from remdm_jax.sampling.config import SamplerConfig
from remdm_jax.sampling.particles import ParticlesConfig
from remdm_jax.registry import choice_spec
from remdm_jax.errors import HelpRequested, not_a_command, run_cli
from remdm_jax.models.dit import DiTConfig
from remdm_jax.validation import check_fields, check_range, option


class UsageError(ValueError):
  """A bad flag, reported as one line with exit code 2."""


class ScriptParser(argparse.ArgumentParser):
  """argparse for the scripts in `sample/`: a bad flag is a `UsageError` (one line, exit 2
  through `run_cli`) instead of argparse's usage text, and `check_lows` checks the integer
  flags, each named as the script spells it."""

  def error(self, message: str):
    raise UsageError(message)


def check_lows(args: argparse.Namespace, lows: dict[str, int]) -> None:
  """Each integer flag (`"--batch-size": 1`; a list flag: every value) at least its bound.

  Raises:
    UsageError: `"--problems must be in [1, inf), got 0"`.
  """
  for flag, low in lows.items():
    values = getattr(args, flag[2:].replace("-", "_"))
    for value in values if isinstance(values, list) else [values]:
      if value is not None and value < low:
        raise UsageError(f"{flag} must be in [{low}, inf), got {value}")


def _command(main, argv: list[str] | None) -> int:
  """Runs a command through `run_cli`. As the process's own command (`argv` None: it reads
  `sys.argv`), it first drops orbax's leftover tracebacks for the rest of the process
  (`checkpoint.drop_orbax_leftovers`): Python reports them whenever it collects them, at exit
  too. Called with `argv` (tests, scripts), it changes no process-wide hook."""
  if argv is None:
    checkpoint.drop_orbax_leftovers()
  return run_cli(main, sys.argv[1:] if argv is None else argv)


_KIND_WORDS = {int: "an integer", float: "a number"}


def _convert(value: str, kind, name: str):
  """The flag's text as the field's type; `X | None` takes "none" or an X."""
  optional = [arg for arg in typing.get_args(kind) if arg is not type(None)]
  if len(optional) == 1 and len(typing.get_args(kind)) == 2:
    return None if value.lower() == "none" else _convert(value, optional[0], name)
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


def _parse_flag(arg: str) -> tuple:
  if "=" not in arg:
    raise UsageError(f"{arg} needs a value: {arg}=VALUE")
  key, value = arg[2:].split("=", 1)
  section, field = key.split(".", 1)
  return section, field, value, True


def _field_types(config) -> dict:
  """Field name -> annotated type of a dataclass instance."""
  hints = typing.get_type_hints(type(config))
  return {f.name: hints[f.name] for f in dataclasses.fields(config)}


def _own_config(cls) -> bool:
  """A registered choice that is a config of its own (block decoding's `BlockConfig`, under
  the strategy name "llada"): the options of the config holding the other choices do not
  apply to it."""
  return getattr(cls, "OWN_CONFIG", False)


def _section_config(section: str, default, flags: list[tuple]):
  """The default of one section updated by its `(field, value, from_text)` flags."""
  choice = choice_spec(default)
  if choice:
    selector, registry, current, holds = choice
    picked = [v for f, v, _ in flags if f == selector]
    name = picked[-1] if picked else current.name
    picked_cls = registry.lookup(name)
    shares = holds and not _own_config(picked_cls)
    shared = {k: v for k, v in _field_types(default).items() if k != selector} if shares else {}
    types = {selector: str, **shared, **_field_types(picked_cls())}
  else:
    types = _field_types(default)
  values = {}
  for field, value, from_text in flags:
    if field not in types:
      if choice:
        raise UsageError(f"--{section}.{field}: " +
                         registry.unknown_option_message(field, name, shared))
      raise UsageError(f"unknown key {section}.{field}; valid keys: {', '.join(sorted(types))}")
    values[field] = _convert(value, types[field], f"{section}.{field}") if from_text else value
  if choice:
    return default.with_options(**values)
  return dataclasses.replace(default, **values)


def parse_sections(argv: list[str], defaults: dict, arguments: str = "",
                   fixed: dict | None = None) -> tuple[dict, list[str]]:
  """Applies `--config` and `--section.field=value` flags; returns (configs, other args).

  `fixed` maps `"section.field"` to what sets it (`{"model.vocab_size": "from the
  tokenizer"}`): the command sets those fields itself, so a flag for one is an error and
  `--help` leaves them out.

  Raises:
    HelpRequested: `-h` or `--help` was given (its text lists every field), or
      `--help=SECTION` (that section's fields).
    UsageError / ValueError: an unknown or malformed flag, a flag for a fixed field, or a
      value the config refuses.
  """
  fixed = fixed or {}
  sections = [arg.split("=", 1)[1] for arg in argv if arg.startswith("--help=")]
  if "-h" in argv or "--help" in argv or sections:
    raise HelpRequested(usage(defaults, arguments, fixed, sections[-1] if sections else None))
  rest, flags = [], []
  for arg in argv:
    if arg.startswith("--config="):
      flags.extend(_config_file_flags(arg.split("=", 1)[1]))
    elif arg.startswith("--") and "." in arg.split("=", 1)[0]:
      flags.append(_parse_flag(arg))
    else:
      rest.append(arg)
  for section, field, _, from_text in flags:
    if section not in defaults:
      raise UsageError(f"unknown section {section!r}; choose from {sorted(defaults)}")
    if f"{section}.{field}" in fixed:
      where = "the flag" if from_text else f"{section}.{field} from the --config file"
      raise UsageError(f"--{section}.{field} is set by this command "
                       f"({fixed[section + '.' + field]}); remove {where}")
  configs = {name: _section_config(name, default, [f[1:] for f in flags if f[0] == name])
             for name, default in defaults.items()}
  return configs, rest


def _field_lines(section: str, config, skip=()) -> list[str]:
  """`--section.field=DEFAULT  help` for each field, the help from its metadata
  (`validation.option`)."""
  lines = []
  for field in dataclasses.fields(config):
    if field.name not in skip:
      value = getattr(config, field.name)
      shown = "none" if value is None else json.dumps(value)   # as a flag takes it
      flag = f"  --{section}.{field.name}={shown}"
      lines.append(f"{flag:<44} {field.metadata.get('help', '')}".rstrip())
  return lines


def _choice_usage(section: str, config) -> list[str]:
  """The selector and the config's own options, then each registered choice's options with
  its defaults."""
  selector, registry, current, holds = choice_spec(config)
  lines = [f"  --{section}.{selector}={json.dumps(current.name)}".ljust(45) +
           f"one of {list(registry.classes)}; options of another {registry.kind} start from "
           "its defaults"]
  if holds:
    lines.extend(_field_lines(section, config, skip=(selector,)))
  for name, cls in registry.classes.items():
    own = " (a config of its own: the options above do not apply)" if _own_config(cls) else ""
    lines.append(f"  {registry.kind} {name}: {(cls.__doc__ or '').splitlines()[0]}{own}")
    lines.extend("  " + line for line in
                 _field_lines(section, current if name == current.name else cls()))
  return lines


def usage(defaults: dict, arguments: str = "", fixed: dict | None = None,
          only: str | None = None) -> str:
  """Every `--section.field=DEFAULT` with its meaning, section by section (but the `fixed`
  fields, which the command sets: they are named at the end); `only`: one section's.

  Raises:
    UsageError: `only` is not one of the sections (they are listed).
  """
  if only is not None and only not in defaults:
    raise UsageError(f"--help={only}: unknown section; choose from {list(defaults)}")
  fixed = {key: reason for key, reason in (fixed or {}).items()
           if only is None or key.startswith(only + ".")}
  lines = [f"usage: {pathlib.Path(sys.argv[0]).name} {arguments}[--config=FILE.json] "
           "[--SECTION.FIELD=VALUE ...]",
           "--config: a JSON object {section: {field: value}}, applied before the flags.",
           f"--help=SECTION: one section's flags only, SECTION one of {list(defaults)}."]
  for section, config in defaults.items():
    if only not in (None, section):
      continue
    lines.append(f"\n{section} ({type(config).__name__}):")
    if choice_spec(config):
      lines.extend(_choice_usage(section, config))
    else:
      lines.extend(_field_lines(section, config, skip=[
          key.split(".", 1)[1] for key in fixed if key.startswith(section + ".")]))
  if fixed:
    lines.append("\nset by this command (a flag for one is an error):")
    lines.extend(f"  {key:<42} {reason}" for key, reason in fixed.items())
  return "\n".join(lines)


def _positional(rest: list[str], names: tuple[str, ...]) -> list[str]:
  """Exactly `len(names)` positional arguments, or a UsageError naming what is wanted."""
  if len(rest) != len(names) or any(a.startswith("-") for a in rest):
    raise UsageError(f"expected {' '.join(names)} and --SECTION.FIELD=VALUE flags, got "
                     f"{rest} (--help lists the flags)")
  return rest


def train_sections() -> dict:
  """The sections of `remdm-train` (imports the data and training modules)."""
  from remdm_jax.data import datasets as data
  from remdm_jax.training import loop as training
  return {
      "model": DiTConfig(hidden=128, heads=4, blocks=4, cond_dim=64, max_length=256,
                         dropout=0.0),
      "train": training.TrainConfig(),
      "data": data.DataConfig(),
      "dist": distributed.DistributedConfig(),
  }


TRAIN_FIXED = {
    "model.vocab_size": "from the tokenizer, --data.tokenizer",
    "model.max_length": "from --data.seq_len",
    "model.causal": "from the objective: true for --train.objective=ar",
    "model.num_classes": "from --data.label: 2 with a label, else 0",
}


def _train(argv: list[str]) -> int:
  from remdm_jax.data import datasets as data
  from remdm_jax.training import loop as training
  sections = train_sections()
  configs, rest = parse_sections(argv, sections, "--workdir=DIR ", TRAIN_FIXED)
  workdir = _workdir(rest, sections)
  data_cfg, train_cfg = configs["data"], configs["train"]
  if train_cfg.objective.name == "classifier" and not data_cfg.label:
    raise UsageError("--train.objective=classifier trains on labelled molecules: add "
                     "--data.label=qed or --data.label=rings (with --data.layout=pad and "
                     "SMILES text, e.g. --data.dataset=qm9_smiles)")
  files.check_writable_folder(workdir, "workdir")
  distributed.initialize(configs["dist"])
  with locks.hold(workdir, "workdir", primary=distributed.is_primary()):
    tokenizer = data_cfg.make_tokenizer()
    model_cfg = dataclasses.replace(configs["model"], vocab_size=tokenizer.vocab_size,
                                    max_length=data_cfg.seq_len,
                                    causal=train_cfg.objective.causal,
                                    num_classes=2 if data_cfg.label else 0)
    train_rows, valid_rows = data_cfg.load_rows(tokenizer)
    stream = data.BatchStream(train_rows, train_cfg.batch_size, train_cfg.seed)
    training.train(model_cfg, train_cfg, stream, valid_rows, tokenizer.mask_id, workdir,
                   tokenizer=data_cfg.tokenizer)
  return 0


def _workdir(rest: list[str], sections: dict) -> str:
  """The one `--workdir=DIR` among the arguments that are not section flags; any other
  argument is an error naming only the unknown ones and what is valid."""
  unexpected = [a for a in rest if not a.startswith("--workdir=")]
  if "--workdir" in unexpected:
    raise UsageError("--workdir needs a value: --workdir=DIR")
  if unexpected:
    raise UsageError(f"unexpected arguments {unexpected}; remdm-train takes --workdir=DIR, "
                     "--config=FILE.json and --SECTION.FIELD=VALUE flags with SECTION one of "
                     f"{sorted(sections)} (--help lists them)")
  workdirs = [a.split("=", 1)[1] for a in rest]
  if len(workdirs) != 1 or not workdirs[0]:
    raise UsageError(f"pass exactly one --workdir=DIR, got {len(workdirs)} "
                     f"({', '.join(map(repr, workdirs)) or 'none'})")
  return workdirs[0]


def train_main(argv: list[str] | None = None) -> int:
  """`remdm-train --workdir=DIR [--config=FILE] [--model.* --train.* --data.* --dist.*]`."""
  return _command(_train, argv)


SAMPLE_SECTIONS = {
    "sampler": SamplerConfig.paper_loop(),
    "job": jobs.SampleJob(),
    "guidance": guidance.NoGuidance(),
    "particles": ParticlesConfig(),
    "dist": distributed.DistributedConfig(),
}


def _sample(argv: list[str]) -> int:
  configs, rest = parse_sections(argv, SAMPLE_SECTIONS)
  if rest:
    raise UsageError(f"unexpected arguments {rest}; flags are --sampler.FIELD=, "
                     "--job.FIELD=, --guidance.FIELD=, --particles.FIELD= and --dist.FIELD= "
                     "(--help lists them)")
  job = configs["job"]
  if job.trajectory and not job.out:
    raise UsageError("--job.trajectory=true keeps each step in the records of the job folder; "
                     "set --job.out=DIR (the command line prints only the text)")
  distributed.initialize(configs["dist"])
  result = jobs.run_sampling_job(configs["sampler"], job, configs["guidance"],
                                 particles=configs["particles"])
  if distributed.is_primary():
    for record in [] if job.quiet else result.records:
      print(f"--- sample {record['index']} ---\n{record['text']}")
    print(f"throughput: {json.dumps(result.throughput)}", file=sys.stderr)
  return 0


def sample_main(argv: list[str] | None = None) -> int:
  """`remdm-sample [--sampler.FIELD=...] [--job.FIELD=...] [--guidance.FIELD=...]
  [--particles.FIELD=...] [--dist.FIELD=...]`."""
  return _command(_sample, argv)


def image_sections() -> dict:
  """`remdm-images`' flag sections: the job, MaskGIT's decoder and the diffusion sampler
  (`--job.decoder` picks one of the two)."""
  from remdm_jax.jobs.image_job import ImageJobConfig
  from remdm_jax.sampling.maskgit import MaskGitDecoderConfig
  return {"job": ImageJobConfig(), "maskgit": MaskGitDecoderConfig(),
          "sampler": SamplerConfig(num_steps=16)}


def _images(argv: list[str]) -> int:
  from remdm_jax.jobs.image_job import sample_images
  defaults = image_sections()
  configs, rest = parse_sections(argv, defaults)
  if rest:
    raise UsageError(f"unexpected arguments {rest}; flags are --job.FIELD=, --maskgit.FIELD= "
                     "and --sampler.FIELD= (--help lists them)")
  job = configs["job"]
  unused = "sampler" if job.decoder == "maskgit" else "maskgit"
  if configs[unused] != defaults[unused]:
    raise UsageError(f"--{unused}.* flags do not apply with --job.decoder={job.decoder}; "
                     f"set --job.decoder={unused} to use them")
  result = sample_images(configs[job.decoder], job)
  print(f"wrote {len(result.labels)} images and grid.png to {result.out}")
  return 0


def images_main(argv: list[str] | None = None) -> int:
  """`remdm-images [--job.FIELD=...] [--maskgit.FIELD=...] [--sampler.FIELD=...]`: sample
  images from a MaskGIT folder (by default the shipped MNIST model) to PNG files."""
  return _command(_images, argv)


@dataclasses.dataclass(frozen=True)
class MergeOptions:
  """How `remdm-merge DIR` scores the merged samples."""

  evaluator: str = option("", "a causal model folder: report Gen PPL and entropy under it")
  add_bos: bool = option(False, "prepend BOS when scoring (evaluators trained on BOS-led rows)")
  batch_size: int = option(32, "rows per evaluator call")

  def __post_init__(self):
    check_fields(self)
    check_range("batch_size", self.batch_size, 1)
    unused = [f.name for f in dataclasses.fields(self)
              if f.name != "evaluator" and getattr(self, f.name) != f.default]
    if unused and not self.evaluator:
      raise ValueError(f"{', '.join(unused)} only {'apply' if len(unused) > 1 else 'applies'} "
                       "when scoring; set evaluator (a causal model folder) or leave "
                       f"{'them' if len(unused) > 1 else 'it'} out")


def _merge(argv: list[str]) -> int:
  configs, rest = parse_sections(argv, {"merge": MergeOptions()}, "DIR ")
  (directory,) = _positional(rest, ("DIR",))
  options = configs["merge"]
  records = shards.merge(directory)
  summary = {"samples": len(records)}
  if options.evaluator:
    from remdm_jax.jobs import scoring   # the evaluator's imports, only when scoring
    summary.update(scoring.evaluate_samples(records, options.evaluator, add_bos=options.add_bos,
                                         batch_size=options.batch_size))
  print(json.dumps(summary))
  return 0


def merge_main(argv: list[str] | None = None) -> int:
  """`remdm-merge DIR [--merge.evaluator=MODEL --merge.add_bos=true]`: merge a job's shards
  into `DIR/samples.jsonl`, optionally scoring them."""
  return _command(_merge, argv)


@dataclasses.dataclass(frozen=True)
class ConvertOptions:
  """What `remdm-convert SRC DST` needs besides the two paths."""

  released_config: str = option("", "the released config.json, for a Lightning .ckpt source "
                                    "only (a folder source has its own; giving one is refused)")
  allow_nonfinite: bool = option(False, "convert tensors holding NaN or infinity instead of "
                                        "refusing them")

  def __post_init__(self):
    check_fields(self)


def _convert_weights(argv: list[str]) -> int:
  from remdm_jax.weights import convert
  configs, rest = parse_sections(argv, {"convert": ConvertOptions()}, "SRC DST ")
  src, dst = _positional(rest, ("SRC", "DST"))
  options = configs["convert"]
  written = convert.convert(src, dst, options.released_config or None,
                            allow_nonfinite=options.allow_nonfinite)
  print(f"wrote {written}")
  return 0


def convert_main(argv: list[str] | None = None) -> int:
  """`remdm-convert SRC DST [--convert.released_config=CONFIG.json]
  [--convert.allow_nonfinite=true]`: released MDLM weights (a Hugging Face folder or a
  Lightning .ckpt) into a model folder."""
  return _command(_convert_weights, argv)


if __name__ == "__main__":
  sys.exit(not_a_command("remdm_jax.cli", "one of its console scripts: remdm-train, "
                         "remdm-sample, remdm-images, remdm-merge or remdm-convert (each "
                         "takes --help)"))
