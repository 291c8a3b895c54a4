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
                   record=record)
  except ValueError as err:
    print(f"error: {err}", file=sys.stderr)
    return 2
  return 0
