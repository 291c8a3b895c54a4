"""The Fréchet distance between two sets of features (FID's formula, on any features).

`d^2 = |mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a S_b)^(1/2))`, the squared 2-Wasserstein distance
between Gaussians fitted to the two sets (Heusel et al. 2017). FID is this distance on the
2048-d pool features of an Inception-v3 network trained on ImageNet; this module takes any
features (the MNIST evaluation uses a small digit classifier's), so its numbers are not FIDs
and compare only with each other.
"""

from __future__ import annotations

import numpy as np


def gaussian_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Mean `[D]` and covariance `[D, D]` (float64, denominator N - 1) of `[N, D]` features.

  Raises:
    ValueError: not `[N, D]` with N >= 2, or non-finite values.
  """
  features = np.asarray(features, np.float64)
  if features.ndim != 2 or features.shape[0] < 2:
    raise ValueError(f"features must be [N, D] with N >= 2, got {list(features.shape)}")
  if not np.all(np.isfinite(features)):
    raise ValueError("features must be finite")
  return features.mean(0), np.cov(features, rowvar=False).reshape(features.shape[1], -1)


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
  """The symmetric square root of a symmetric positive semi-definite matrix."""
  values, vectors = np.linalg.eigh((matrix + matrix.T) / 2.0)
  return (vectors * np.sqrt(np.clip(values, 0.0, None))) @ vectors.T


def frechet_distance(features_a: np.ndarray, features_b: np.ndarray) -> float:
  """The squared Fréchet distance between Gaussians fitted to `[N, D]` and `[M, D]` features.

  `tr((S_a S_b)^(1/2))` is computed as `tr((S_a^(1/2) S_b S_a^(1/2))^(1/2))`, a symmetric
  eigenproblem (no complex square root, no `scipy`).

  Raises:
    ValueError: bad features (see `gaussian_stats`) or different widths.
  """
  mu_a, cov_a = gaussian_stats(features_a)
  mu_b, cov_b = gaussian_stats(features_b)
  if mu_a.shape != mu_b.shape:
    raise ValueError(f"features must have the same width, got {mu_a.shape[0]} and "
                     f"{mu_b.shape[0]}")
  root_a = _psd_sqrt(cov_a)
  cross = np.sum(np.sqrt(np.clip(np.linalg.eigvalsh(root_a @ cov_b @ root_a), 0.0, None)))
  return float(np.sum((mu_a - mu_b) ** 2) + np.trace(cov_a) + np.trace(cov_b) - 2.0 * cross)
