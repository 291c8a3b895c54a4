"""Task models: small LLaDA-architecture models trained here on the reasoning tasks, and their
scoring with any decoder.

A `TaskRecipe` fixes what a task model is: the tasks of its mixture (equal shares), the row
format (`remdm_jax.tasks.rows.RowFormat`), the model's size and how many examples each split
holds. `train_task_model` generates the data (seeded; written to `WORKDIR/data/` as JSON
lines), trains with the library's loop (`remdm_jax.training.loop.train`, resumable) and
leaves the model in `WORKDIR/model` (the released LLaDA layout, its character tokenizer and
`task_format.json`). `solve` decodes answers to any inputs with any sampler config.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import shutil
from typing import NamedTuple

import jax
import numpy as np

from remdm_jax import files
from remdm_jax.models.llada import LLaDAConfig
from remdm_jax.tasks import base as task_base
from remdm_jax.tasks.countdown import Countdown
from remdm_jax.tasks.rows import RowFormat
from remdm_jax.tasks.sudoku import Sudoku
from remdm_jax.text.char_tokenizer import CharTokenizer
from remdm_jax.validation import check_choice, check_int

FORMAT_FILE = "task_format.json"


def _small_llada(d_model: int, n_layers: int, n_heads: int, mlp: int, length: int,
                 vocab_size: int) -> LLaDAConfig:
  return LLaDAConfig(vocab_size=vocab_size, d_model=d_model, n_layers=n_layers,
                     n_heads=n_heads, n_kv_heads=n_heads, mlp_hidden_size=mlp,
                     rope_theta=10_000.0, max_sequence_length=length, weight_tying=False,
                     mask_id=CharTokenizer.mask_id, param_dtype="float32", dtype="float32")


@dataclasses.dataclass(frozen=True)
class TaskRecipe:
  """What a task model is trained on, and its size.

  Attributes:
    name: the recipe's name ("countdown", "sudoku").
    tasks: the tasks of the training mixture, in equal shares.
    rows: where prompt and answer sit in a row.
    model: the LLaDA config (vocabulary of the character tokenizer, length `rows.seq_len`).
    train_examples: training examples of each task (one count per task).
    valid_examples: validation examples per task.
  """

  name: str
  tasks: tuple[task_base.Task, ...]
  rows: RowFormat
  model: LLaDAConfig
  train_examples: tuple[int, ...]
  valid_examples: int = 256

  def examples(self, split: str, seed: int) -> list[dict[str, str]]:
    """The recipe's examples of `split` (each task's `generate`, in task order), those whose
    output does not fit the row format left out."""
    counts = (self.train_examples if split == "train"
              else (self.valid_examples,) * len(self.tasks))
    found = []
    for k, (task, n) in enumerate(zip(self.tasks, counts)):
      found += [e for e in task.generate(seed * 1_000 + k, n, split)
                if len(e["output"]) < self.rows.answer_length
                and len(e["input"]) < self.rows.prompt_length]
    return found


_TOKENIZER = CharTokenizer()

RECIPES = {
    "sudoku": TaskRecipe(
        "sudoku", (Sudoku(4, 4, 12), Sudoku(6, 10, 18)), RowFormat(42, 42),
        _small_llada(160, 6, 8, 480, 84, _TOKENIZER.vocab_size), train_examples=(24_000, 24_000)),
    "countdown": TaskRecipe(
        "countdown", (Countdown(3, 1, 99, 10, 100, simplest=True),
                      Countdown(3, 1, 20, 1, 50, simplest=True)),
        RowFormat(14, 24), _small_llada(192, 6, 8, 576, 38, _TOKENIZER.vocab_size),
        train_examples=(160_000, 40_000)),
}


def recipe(name: str) -> TaskRecipe:
  check_choice("recipe", name, tuple(RECIPES))
  return RECIPES[name]


def write_format(folder, task_recipe: TaskRecipe) -> None:
  """Writes `FOLDER/task_format.json`: the row format and the tasks of the recipe."""
  payload = {"recipe": task_recipe.name, **dataclasses.asdict(task_recipe.rows),
             "tasks": [t.options() for t in task_recipe.tasks]}
  files.write_atomic(pathlib.Path(folder) / FORMAT_FILE, json.dumps(payload, indent=1) + "\n")


def read_format(folder) -> RowFormat:
  """The `RowFormat` recorded in a task model folder.

  Raises:
    ValueError: no `task_format.json`, or lengths that are not integers >= 2.
  """
  path = pathlib.Path(folder) / FORMAT_FILE
  payload = files.read_json_object(path, "task format")
  try:
    return RowFormat(check_int("prompt_length", payload.get("prompt_length"), 2),
                     check_int("answer_length", payload.get("answer_length"), 2))
  except (TypeError, ValueError) as err:
    raise ValueError(f"{path}: {err}") from None


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "generation_config.json", "chat_template.jinja")


def _check_data_stamp(data: pathlib.Path, task_recipe: TaskRecipe, data_seed: int) -> None:
  """Records what `data/` was generated from (`data/recipe.json`) and refuses a rerun of
  another recipe or data seed in the same workdir.

  Raises:
    ValueError: `data/recipe.json` records other tasks, row format, counts or data seed.
  """
  stamp = {"tasks": [t.options() for t in task_recipe.tasks],
           "rows": dataclasses.asdict(task_recipe.rows),
           "train_examples": list(task_recipe.train_examples),
           "valid_examples": task_recipe.valid_examples, "data_seed": data_seed}
  changed = files.record_or_compare(data / "recipe.json", stamp, "task data record")
  if changed:
    raise ValueError(f"{data} holds data of another recipe or data seed (differs in "
                     f"{list(changed)}); use another workdir for recipe {task_recipe.name!r}")


def train_task_model(task_recipe: TaskRecipe, train_cfg, workdir, *, data_seed: int = 0,
                     progress: bool = True, stop_at: int | None = None,
                     init_from=None) -> pathlib.Path:
  """Trains (or resumes) a task model in `workdir`; returns `WORKDIR/model` (complete once
  the run reaches `train_cfg.steps`).

  The examples of each split are generated from `data_seed` and written to
  `WORKDIR/data/{train,valid}.jsonl` (a rerun reads them back). `init_from`, a LLaDA folder
  (a released one, or a task model), fine-tunes it: its config and tokenizer replace the
  recipe's model and character tokenizer, and its tokenizer files are copied to the export.
  """
  from remdm_jax import families
  from remdm_jax.data.datasets import BatchStream
  from remdm_jax.training.loop import train
  workdir = pathlib.Path(workdir)
  model_cfg, tokenizer = task_recipe.model, _TOKENIZER
  if init_from is not None:
    family = families.for_folder(init_from)
    tokenizer = family.tokenizer(pathlib.Path(init_from))
    model_cfg = LLaDAConfig.from_hf(files.read_json_object(
        pathlib.Path(init_from) / "config.json", "LLaDA config.json"))
  data = workdir / "data"
  data.mkdir(parents=True, exist_ok=True)
  _check_data_stamp(data, task_recipe, data_seed)
  splits = {}
  for split in ("train", "valid"):
    path = data / f"{split}.jsonl"
    if not path.is_file():
      task_base.write_examples(path, task_recipe.examples(split, data_seed))
    splits[split] = task_recipe.rows.training_rows(tokenizer, task_base.read_examples(path))
  stream = BatchStream(splits["train"], train_cfg.batch_size, train_cfg.seed)
  train(model_cfg, train_cfg, stream, splits["valid"], tokenizer.mask_id, workdir,
        progress=progress, stop_at=stop_at, tokenizer=tokenizer, init_from=init_from)
  model = workdir / "model"
  if model.is_dir() and not (model / FORMAT_FILE).exists():
    for name in TOKENIZER_FILES if init_from is not None else ():
      if (pathlib.Path(init_from) / name).is_file():
        shutil.copyfile(pathlib.Path(init_from) / name, model / name)
    write_format(model, task_recipe)
  return model


def _decoded(sampler, prompts: np.ndarray, size: int, seed: int):
  """Each batch's sampler output for `prompts [N, L]` in batches of `size` (the last padded
  with copies of its last row), and the number of real rows in it."""
  for start in range(0, len(prompts), size):
    chunk = prompts[start:start + size]
    padded = np.concatenate([chunk, np.repeat(chunk[-1:], size - len(chunk), 0)])
    yield sampler(jax.random.key(seed), prompt=padded, first_index=start), len(chunk)


def _sampler_for(denoiser, config, rows: RowFormat, tokenizer, inputs, batch_size, **options):
  """`(sampler, prompts [N, L] int32, batch size)` for decoding `inputs`."""
  from remdm_jax.sampling.sampler import make_sampler
  check_int("batch_size", batch_size, 1)
  prompts = rows.prompts(tokenizer, inputs, tokenizer.mask_id)
  size = min(batch_size, len(prompts))
  return make_sampler(denoiser, config, batch_size=size, seq_len=rows.seq_len,
                      mask_id=tokenizer.mask_id, **options), prompts, size


def solve(denoiser, config, rows: RowFormat, tokenizer: CharTokenizer, inputs: list[str], *,
          seed: int = 0, batch_size: int = 64) -> list[str]:
  """The decoded answers to `inputs` (one per input, up to the first EOS).

  Input `i` is decoded with key `fold_in(key(seed), i)` (the sampler's per-example
  randomness through `first_index`), so an answer does not depend on the batch it was in.
  """
  sampler, prompts, size = _sampler_for(denoiser, config, rows, tokenizer, inputs, batch_size)
  return [rows.answer(tokenizer, row) for tokens, real in _decoded(sampler, prompts, size, seed)
          for row in np.asarray(tokens)[:real]]


class ParticleAnswers(NamedTuple):
  """`solve_with_particles`'s answers."""

  chosen: list[str]          # one per input
  every: list[list[str]]     # [N][P], every particle's
  nfe: int                   # model calls per input
  resamplings: list[int]     # how often each input's particles resampled


def solve_with_particles(denoiser, config, particles, rows: RowFormat,
                         tokenizer: CharTokenizer, inputs: list[str], *, seed: int = 0,
                         batch_size: int = 64) -> ParticleAnswers:
  """`solve` under a particle method (`remdm_jax.particles`)."""
  sampler, prompts, size = _sampler_for(denoiser, config, rows, tokenizer, inputs, batch_size,
                                        particles=particles, return_particles=True)
  found = ParticleAnswers([], [], 0, [])
  for result, real in _decoded(sampler, prompts, size, seed):
    found.chosen.extend(rows.answer(tokenizer, row) for row in np.asarray(result.tokens)[:real])
    found.every.extend([rows.answer(tokenizer, row) for row in example]
                       for example in np.asarray(result.particles)[:real])
    found.resamplings.extend(np.asarray(result.resamplings)[:real].tolist())
    found = found._replace(nfe=max(found.nfe, int(result.nfe)))
  return found


def solve_with_votes(denoiser, config, rows: RowFormat, tokenizer: CharTokenizer,
                     inputs: list[str], vote, *, seed: int = 0,
                     batch_size: int = 64) -> tuple[list[str], list[str]]:
  """`solve`, and the answer `vote` (a `remdm_jax.eval.voting.TemporalVote`) picks from the
  answers of each step's clean-sequence estimate: `(final answers, voted answers)`."""
  sampler, prompts, size = _sampler_for(denoiser, config, rows, tokenizer, inputs, batch_size,
                                        return_trajectory=True, record_predictions=True)
  final, voted = [], []
  for trajectory, real in _decoded(sampler, prompts, size, seed):
    final += [rows.answer(tokenizer, row) for row in np.asarray(trajectory.tokens)[:real]]
    predicted = np.asarray(trajectory.predicted)[:, :real]             # [n, real, L]
    voted += [vote([rows.answer(tokenizer, row) for row in predicted[:, b]])
              for b in range(real)]
  return final, voted


SHIPPED = {"countdown": "countdown-llada", "sudoku": "sudoku-llada"}   # task -> shipped folder


def shipped_model(task: str) -> pathlib.Path:
  """The folder of the shipped model of `task` ("countdown" or "sudoku").

  Raises:
    ValueError: an unknown task, or no model of it is shipped (naming how to train one).
  """
  from remdm_jax.jobs.sample_job import shipped_models
  check_choice("task", task, tuple(SHIPPED))
  folder = shipped_models() / SHIPPED[task]
  if not (folder / FORMAT_FILE).is_file():
    raise ValueError(f"no {task} model is shipped yet ({folder.name}); train one with "
                     f"python train/task_models.py --recipe={task} --workdir=DIR and pass "
                     "its DIR/model as the model")
  return folder


def default_decoder(rows: RowFormat):
  """The default decoder of a task model: LLaDA's low-confidence remasking, one block over the
  whole answer, one token per step (NFE = answer length), argmax."""
  from remdm_jax.sampling.config import BlockConfig
  return BlockConfig(block_length=rows.answer_length)


@dataclasses.dataclass(frozen=True)
class Scored:
  """Predictions on examples and their exact scores.

  Attributes:
    predictions: one answer per example ("" where the input does not fit the model).
    correct: `[N]` bool, the verifier's verdict per example.
    unfit: how many inputs did not fit the model's prompt (too long, or a character it does
      not know); they count as wrong.
  """

  predictions: list[str]
  correct: np.ndarray
  unfit: int

  @property
  def accuracy(self) -> float:
    return float(np.mean(self.correct))


@dataclasses.dataclass(frozen=True)
class TaskModel:
  """A task model read once from its folder (`load_task_model`): its denoiser, tokenizer and
  row format, for any number of `score` calls."""

  denoiser: object
  tokenizer: object
  rows: RowFormat


def load_task_model(folder) -> TaskModel:
  """The task model in `folder` (a LLaDA folder with `task_format.json`).

  Raises:
    ValueError: not a model folder of a registered family, or no valid `task_format.json`.
  """
  from remdm_jax import families
  folder = pathlib.Path(folder)
  family = families.for_folder(folder)
  return TaskModel(family.as_denoiser(family.load(folder)), family.tokenizer(folder),
                   read_format(folder))


def score(task: task_base.Task, model: TaskModel, examples, config=None, *, seed: int = 0,
          batch_size: int = 64) -> Scored:
  """Decodes an answer to every example's input with the task `model` and the sampler
  `config` (None: `default_decoder`), and verifies it with `task`."""
  tokenizer, rows = model.tokenizer, model.rows
  fits = []
  for example in examples:
    try:
      rows.prompt_ids(tokenizer, example["input"])
      fits.append(True)
    except ValueError:
      fits.append(False)
  inputs = [e["input"] for e, fit in zip(examples, fits) if fit]
  answers = iter(solve(model.denoiser, config or default_decoder(rows), rows, tokenizer,
                       inputs, seed=seed, batch_size=batch_size) if inputs else [])
  predictions = [next(answers) if fit else "" for fit in fits]
  correct = np.array([fit and task.verify(e["input"], p)
                      for e, p, fit in zip(examples, predictions, fits)], bool)
  return Scored(predictions, correct, fits.count(False))
