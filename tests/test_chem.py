"""Molecule metrics on known SMILES (RDKit, the `chem` extra)."""

import numpy as np
import pytest

pytest.importorskip("rdkit", reason='the chem extra: pip install -e ".[chem]"')

from remdm_jax.eval import chem  # noqa: E402


def test_validity_rings_and_canonical_forms():
  assert chem.molecule("C1CC") is None and chem.molecule("") is None
  assert chem.canonical("OCC") == chem.canonical("CCO") == "CCO"
  rings = chem.property_values(["CCO", "c1ccccc1", "c1ccc2ccccc2c1", "C1CC1C1CC1", "C1CC"],
                               "rings")
  np.testing.assert_array_equal(rings[:4], [0, 1, 2, 2])
  assert np.isnan(rings[4])
  qed = chem.property_values(["c1ccccc1O", "CCO"], "qed")
  assert np.all((qed > 0) & (qed < 1)) and qed[0] != qed[1]


def test_class_labels_at_the_percentile():
  values = np.array([0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, np.nan])
  labels, threshold = chem.class_labels(values, 90.0)
  assert threshold == pytest.approx(8.1)                      # numpy's linear percentile
  np.testing.assert_array_equal(labels, [0] * 9 + [1, 0])
  labels, _ = chem.class_labels(np.array([1.0, 1.0, 1.0, 2.0]), 50.0)
  np.testing.assert_array_equal(labels, [1, 1, 1, 1])        # "at or above" the threshold
  with pytest.raises(ValueError, match="no finite entry"):
    chem.class_labels(np.array([np.nan]))


def test_generation_metrics_count_valid_unique_novel():
  training = chem.canonical_set(["CCO", "c1ccccc1"])
  samples = ["OCC", "CCO", "CCN", "NCC", "c1ccccc1O", "C1CC", "", "CC(=O)O"]
  got = chem.generation_metrics(samples, training, "rings")
  # valid: OCC, CCO, CCN, NCC, phenol, acetic acid (6 of 8); unique: CCO, CCN, phenol,
  # acetic acid (4); novel: CCN, phenol, acetic acid (3); rings 0, 1, 0.
  assert got == {"samples": 8, "valid": 0.75, "unique": 4 / 6, "novel": 0.75,
                 "novel_valid_unique": 3, "mean_property": pytest.approx(1 / 3)}
  assert np.isnan(chem.generation_metrics(["CCO"], training, "qed")["mean_property"])
  with pytest.raises(ValueError, match="unknown prop 'logp'"):
    chem.generation_metrics(["CCO"], training, "logp")


def test_split_labels_use_the_training_threshold():
  train = ["C", "CC", "C1CC1", "c1ccccc1", "C1CC1C1CC1"]           # rings 0, 0, 1, 1, 2
  valid = ["C1CC1", "C1CC1C1CC1C1CC1", "CCO", "C1CC"]             # 1, 3, 0, invalid
  train_labels, valid_labels = chem.split_labels(train, valid, "rings", percentile=80.0)
  # 80th percentile of [0, 0, 1, 1, 2] is 1.2: only 2 rings and above are class 1
  np.testing.assert_array_equal(train_labels, [0, 0, 0, 0, 1])
  np.testing.assert_array_equal(valid_labels, [0, 1, 0, 0])


def test_novelty_against_a_training_set_written_in_any_form():
  """A training set that is not a `canonical_set` is canonicalised first: "OCC" in it is the
  sample "CCO", so only "CCN" is novel; a `canonical_set` is used as it is."""
  got = chem.generation_metrics(["CCO", "CCN"], ["OCC", "C1CC"], "rings")
  assert (got["novel"], got["novel_valid_unique"]) == (0.5, 1)
  assert chem.generation_metrics(["CCO", "CCN"], {"OCC"}, "rings") == got
  training = chem.canonical_set(s for s in ["OCC"])         # any iterable of strings
  assert isinstance(training, chem.CanonicalSet) and training == {"CCO"}
  assert chem.generation_metrics(["CCO", "CCN"], training, "rings") == got
