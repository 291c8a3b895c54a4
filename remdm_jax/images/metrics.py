"""The offline image measure of the MNIST model: a digit classifier's accuracy on the classes
the samples were asked for, and the Fréchet distance between its features of the samples and
of real test digits (`frechet.frechet_distance`).

This is not FID: FID reads the 2048-d features of an ImageNet Inception-v3 network, which
cannot be fetched here; the classifier (`images.classifier`, trained on the training split)
gives 64-d features, so the numbers compare only with each other.
"""

from __future__ import annotations

import jax
import numpy as np
from flax import nnx

from remdm_jax.images.classifier import DigitClassifier
from remdm_jax.images.frechet import frechet_distance


def _features_and_logits(classifier: DigitClassifier, x: jax.Array):
  h = classifier.features(x)
  return h, classifier.out(h)


def classify(classifier: DigitClassifier, pixels: np.ndarray, batch_size: int = 1000
             ) -> tuple[np.ndarray, np.ndarray]:
  """`(features [N, 64] float32, predicted classes [N] int32)` of `pixels` (`uint8` or float in
  [0, 1], `[N, 28, 28]` or `[N, 28, 28, 1]`)."""
  pixels = np.asarray(pixels)
  pixels = pixels.astype(np.float32) / 255.0 if pixels.dtype == np.uint8 else pixels
  pixels = pixels.reshape(pixels.shape[0], 28, 28, 1).astype(np.float32)
  graphdef, state = nnx.split(classifier)
  run = jax.jit(lambda state, x: _features_and_logits(nnx.merge(graphdef, state), x))
  features, predicted = [], []
  for start in range(0, len(pixels), batch_size):
    f, logits = run(state, pixels[start:start + batch_size])
    features.append(np.asarray(f))
    predicted.append(np.asarray(logits).argmax(-1).astype(np.int32))
  return np.concatenate(features), np.concatenate(predicted)


def score_images(classifier: DigitClassifier, pixels: np.ndarray, labels: np.ndarray,
                 reference_features: np.ndarray) -> dict[str, float]:
  """`{"accuracy": share classified as their label, "frechet": distance to the reference}`."""
  features, predicted = classify(classifier, pixels)
  return {"accuracy": float(np.mean(predicted == np.asarray(labels))),
          "frechet": frechet_distance(features, reference_features)}
