"""Molecule properties, class labels and generation metrics for SMILES (QM9).

Needs RDKit, an optional extra: `pip install -e ".[chem]"`. The protocol follows Schiff et al.
2024 (arXiv 2412.10193), as used by ReMDM section 5.3:

- properties: drug-likeness `qed` (`rdkit.Chem.QED.qed`) and `rings`, the number of smallest
  rings (`len(Chem.GetSymmSSSR(mol))`);
- labels: class 1 at or above the 90th percentile of the training set's property, else 0;
- metrics of a set of samples: validity (RDKit parses the SMILES), uniqueness (distinct
  canonical SMILES among the valid), novelty (unique ones not in the training set), the
  count of novel, valid and unique molecules, and the mean property over those.

Arguments are checked before any molecule is parsed: a list of SMILES must be a list of
strings (a bare string is refused, since iterating it would give its characters), property
names are "qed" or "rings", percentiles lie in [0, 100].
"""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np

from remdm_jax.validation import (ArgumentTypeError, check_array, check_choice, check_scalar,
                                  check_string, check_strings)

PROPERTIES = ("qed", "rings")


class CanonicalSet(frozenset):
  """A frozenset of canonical SMILES, as `canonical_set` builds it. `generation_metrics`
  takes one as it is and canonicalises any other collection of SMILES first."""


def _check_percentile(percentile) -> None:
  check_scalar("percentile", percentile, 0.0, 100.0)


def _rdkit():
  """`(Chem, QED)`, RDKit's modules, with its parse warnings silenced."""
  try:
    from rdkit import Chem, RDLogger
    from rdkit.Chem import QED
  except ImportError as error:
    raise ImportError('molecule metrics need RDKit: pip install -e ".[chem]"') from error
  RDLogger.DisableLog("rdApp.*")
  return Chem, QED


def molecule(smiles: str):
  """The RDKit molecule of a SMILES string, or None when it does not parse (or is empty).

  Raises:
    ArgumentTypeError: `smiles` is not a string.
  """
  Chem, _ = _rdkit()
  if not check_string("smiles", smiles).strip():
    return None
  return Chem.MolFromSmiles(smiles)


def canonical(smiles: str) -> str | None:
  """RDKit's canonical SMILES, or None for an invalid one; `smiles` must be a string."""
  Chem, _ = _rdkit()
  mol = molecule(smiles)
  return None if mol is None else Chem.MolToSmiles(mol)


def property_of(mol, prop: str) -> float:
  """`qed` or `rings` of an RDKit molecule (`molecule(smiles)`, not None)."""
  Chem, QED = _rdkit()
  if not isinstance(mol, Chem.Mol):
    raise ArgumentTypeError(f"mol must be an RDKit molecule (chem.molecule(smiles)), got "
                            f"{mol!r:.40}")
  check_choice("prop", prop, PROPERTIES)
  return float(QED.qed(mol)) if prop == "qed" else float(len(Chem.GetSymmSSSR(mol)))


def property_values(smiles: Sequence[str], prop: str) -> np.ndarray:
  """`[N] float64` property per SMILES (a list of N strings), NaN where it does not parse."""
  smiles = check_strings("smiles", smiles)
  check_choice("prop", prop, PROPERTIES)
  values = np.full(len(smiles), np.nan)
  for i, text in enumerate(smiles):
    mol = molecule(text)
    if mol is not None:
      values[i] = property_of(mol, prop)
  return values


def class_labels(values: np.ndarray, percentile: float = 90.0) -> tuple[np.ndarray, float]:
  """`(labels [N] int32, threshold)`: 1 where the value is at or above the `percentile`-th
  percentile of the finite values (NaN, an unparsable molecule, is class 0).

  Args:
    values: `[N]` integer or floating-point values, at least one finite.
    percentile: in [0, 100].
  """
  _check_percentile(percentile)
  values = check_array("values", values, ndim=1, dims="[N]")
  if values.dtype == bool or not np.issubdtype(values.dtype, np.number) or \
      np.issubdtype(values.dtype, np.complexfloating):
    raise ArgumentTypeError(f"values must hold real numbers, got dtype {values.dtype}")
  values = np.asarray(values, np.float64)
  finite = np.isfinite(values)
  if not finite.any():
    raise ValueError("values has no finite entry to take a percentile of")
  threshold = float(np.percentile(values[finite], percentile))
  return (finite & (np.where(finite, values, -np.inf) >= threshold)).astype(np.int32), threshold


def split_labels(train: Sequence[str], validation: Sequence[str], prop: str,
                 percentile: float = 90.0) -> tuple[np.ndarray, np.ndarray]:
  """`[N] int32` class labels of two splits by the training split's percentile threshold (a
  validation molecule is class 1 at or above the training threshold); `train` and
  `validation` are lists of SMILES strings, `percentile` in [0, 100]."""
  train, validation = check_strings("train", train), check_strings("validation", validation)
  check_choice("prop", prop, PROPERTIES)
  _check_percentile(percentile)
  return split_labels_of_values(property_values(train, prop), property_values(validation, prop),
                                percentile)


def split_labels_of_values(train_values: np.ndarray, valid_values: np.ndarray,
                           percentile: float = 90.0) -> tuple[np.ndarray, np.ndarray]:
  """`split_labels` from the two splits' `property_values` (NaN: an unparsable molecule, class
  0), for a caller that has computed them already."""
  train_labels, threshold = class_labels(train_values, percentile)
  valid_labels = (np.isfinite(valid_values) & (np.nan_to_num(valid_values, nan=-np.inf)
                                               >= threshold)).astype(np.int32)
  return train_labels, valid_labels


def canonical_set(smiles: Iterable[str]) -> CanonicalSet:
  """Canonical SMILES of the valid molecules of a list of SMILES strings, e.g. of the
  training set (for novelty)."""
  smiles = check_strings("smiles", smiles)
  return CanonicalSet(c for c in map(canonical, smiles) if c is not None)


def generation_metrics(samples: Sequence[str], training: Iterable[str],
                       prop: str) -> dict:
  """Validity, uniqueness, novelty, the novel-valid-unique count and its mean property.

  Args:
    samples: generated SMILES strings (N of them).
    training: the training molecules: their `canonical_set` (used as it is, so build it
      once for many calls), or any other list or set of SMILES strings, which is
      canonicalised here first (a molecule written another way is still not novel).
    prop: "qed" or "rings".

  Returns:
    A dict: `samples` N, `valid` (fraction of N), `unique` (fraction of the valid),
    `novel` (fraction of the unique), `novel_valid_unique` (count), `mean_property` over the
    novel valid unique molecules (NaN when there is none).

  Raises:
    ValueError: `samples` empty, an unknown `prop`, or `samples` / `training` not a list
      of strings (a bare string included).
  """
  samples = check_strings("samples", samples)
  check_choice("prop", prop, PROPERTIES)
  if not samples:
    raise ValueError("samples must be a non-empty list of SMILES strings, got 0 of them")
  if not isinstance(training, CanonicalSet):
    training = canonical_set(check_strings("training", training))
  valid = [c for c in map(canonical, samples) if c is not None]
  unique = set(valid)
  novel = sorted(unique - training)
  values = property_values(novel, prop)
  return {"samples": len(samples), "valid": len(valid) / len(samples),
          "unique": len(unique) / max(len(valid), 1),
          "novel": len(novel) / max(len(unique), 1), "novel_valid_unique": len(novel),
          "mean_property": float(values.mean()) if novel else float("nan")}
