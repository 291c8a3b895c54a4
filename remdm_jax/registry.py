"""Choices registered once by name, and the flat keyword form of the configs that hold one.

Three kinds of choice are frozen dataclasses with a class-level `name`, each holding its own
options: sampler strategies (`Cap(eta=0.01)`), training objectives (`RemdmObjective(...)`)
and guidance (`Cfg(gamma=2.0)`). A `Registry` maps names to classes for one kind. A config
that holds a choice beside its own fields (`SamplerConfig.strategy`, `TrainConfig.objective`)
takes the flat form `with_options(strategy="cap", eta=0.01, num_steps=64)`: each option goes
to the choice when it has it, else to the config, and a new name starts from that choice's
defaults. `CHOICE = (selector, registry)` on a class tells the command line which flag picks
the choice (`--sampler.strategy`, `--train.objective`, `--guidance.kind`).
"""

from __future__ import annotations

import dataclasses

from remdm_jax.validation import ArgumentTypeError, check_choice


def option_names(cls) -> list[str]:
  """The options (dataclass fields) of a class or instance, in field order."""
  return [f.name for f in dataclasses.fields(cls)]


class Registry:
  """The classes of one kind of choice by their `name`; `register` is a class decorator."""

  def __init__(self, kind: str, example: str):
    self.kind = kind          # "strategy", "objective", "guidance": used in messages
    self.example = example    # a registered name, for the type error's message
    self.classes: dict[str, type] = {}

  def register(self, cls: type) -> type:
    """Adds `cls` under `cls.name`."""
    self.classes[cls.name] = cls
    return cls

  def lookup(self, name: str) -> type:
    """The class registered as `name`.

    Raises:
      ArgumentTypeError: `name` is not a string. ValueError: an unknown name (listing them).
    """
    if not isinstance(name, str):
      raise ArgumentTypeError(f"{self.kind} must be a name such as {self.example!r} or a "
                              f"{self.kind} object, got {name!r}")
    check_choice(self.kind, name, tuple(self.classes))
    return self.classes[name]

  def unknown_option_message(self, key: str, name: str, shared=()) -> str:
    """Names an option that choice `name` does not have, and the choices that do (`shared`:
    the options of the config that holds the choice)."""
    own = option_names(self.classes[name])
    others = sorted(n for n, cls in self.classes.items() if key in option_names(cls))
    if others:
      return (f"{key} does not apply to {self.kind} {name!r} (its own options: "
              f"{own or 'none'}; {key} belongs to {others})")
    every = f", every {self.kind} takes {sorted(shared)}" if shared else ""
    return f"unknown option {key!r}; {self.kind} {name!r} takes {own or 'none'}{every}"

  def build(self, name: str, **options):
    """A choice from flat keywords: `build("cap", eta=0.01)` is `Cap(eta=0.01)`.

    Raises:
      ValueError: an unknown name or option (naming the choices that have it), or a value the
        class refuses.
    """
    cls = self.lookup(name)
    for key in options:
      if key not in option_names(cls):
        raise ValueError(self.unknown_option_message(key, name))
    return cls(**options)


def choice_spec(config):
  """`(selector, registry, choice, holds)` of a config whose class names its registered choice
  (`CHOICE = (selector, registry)`): the choice is the field `selector` of the config
  (`holds`, e.g. `SamplerConfig.strategy`) or the config itself (a bare choice, e.g. a
  guidance, whose name the flat form calls `selector`). None for any other config."""
  spec = getattr(type(config), "CHOICE", None)
  if spec is None:
    return None
  selector, registry = spec
  holds = selector in option_names(config)
  return selector, registry, getattr(config, selector) if holds else config, holds


def flat_options(config) -> dict:
  """The flat, JSON-able form `{selector: name, **choice options, **config options}`;
  `config.with_options(**it)` rebuilds the config."""
  selector, _, choice, holds = choice_spec(config)
  own = {selector: choice.name, **dataclasses.asdict(choice)}
  if not holds:
    return own
  return {**own, **{k: getattr(config, k) for k in option_names(config) if k != selector}}


def with_choice_options(config, options: dict):
  """A copy of `config` (see `choice_spec`) with flat options changed. A new choice (a name,
  or a choice object) starts from that choice's defaults; other options go to the choice when
  it has them, else to the config.

  Raises:
    ValueError: an unknown option, or one the choice does not have (naming both).
  """
  selector, registry, current, holds = choice_spec(config)
  options = dict(options)
  name = options.pop(selector, current.name)
  if dataclasses.is_dataclass(name) and not isinstance(name, type):   # a choice object
    choice = name
  elif name == current.name:
    choice = current
  else:
    choice = registry.lookup(name)()
  own = set(option_names(choice))
  shared = set(option_names(config)) - {selector} if holds else set()
  for key in options:
    if key not in own | shared:
      raise ValueError(registry.unknown_option_message(key, choice.name, shared))
  choice = dataclasses.replace(choice, **{k: v for k, v in options.items() if k in own})
  if not holds:
    return choice
  return dataclasses.replace(config, **{selector: choice},
                             **{k: v for k, v in options.items() if k in shared})
