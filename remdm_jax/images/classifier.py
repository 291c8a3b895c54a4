"""A small digit classifier: the feature extractor of the offline image metric.

Two strided 3x3 convolutions (16 and 32 channels, ReLU), a dense layer of `FEATURES` units
(ReLU; the features the Fréchet distance reads) and a dense layer to the 10 classes. Trained
here on the training split of the MNIST digits (`train_digit_classifier`), with random shifts of
up to 2 pixels; stored as a flax msgpack file (`save` / `load`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from remdm_jax.weights import msgpack_io

FEATURES = 64
NUM_CLASSES = 10


class DigitClassifier(nnx.Module):
  """`classifier(images [N, 28, 28, 1] float32 in [0, 1]) -> logits [N, 10] float32`."""

  def __init__(self, *, rngs: nnx.Rngs):
    self.conv1 = nnx.Conv(1, 16, (3, 3), strides=2, rngs=rngs)
    self.conv2 = nnx.Conv(16, 32, (3, 3), strides=2, rngs=rngs)
    self.hidden = nnx.Linear(7 * 7 * 32, FEATURES, rngs=rngs)
    self.out = nnx.Linear(FEATURES, NUM_CLASSES, rngs=rngs)

  def features(self, images: jax.Array) -> jax.Array:
    """`[N, 28, 28, 1]` -> the penultimate activations `[N, FEATURES]` float32."""
    x = jax.nn.relu(self.conv1(images))
    x = jax.nn.relu(self.conv2(x))
    return jax.nn.relu(self.hidden(x.reshape(x.shape[0], -1)))

  def __call__(self, images: jax.Array) -> jax.Array:
    return self.out(self.features(images))


def _shifted(key: jax.Array, images: jax.Array, most: int) -> jax.Array:
  """Each image rolled by its own random shift in [-most, most] along both axes."""
  shifts = jax.random.randint(key, (images.shape[0], 2), -most, most + 1)
  return jax.vmap(lambda image, s: jnp.roll(image, (s[0], s[1]), axis=(0, 1)))(images, shifts)


def train_digit_classifier(seed: int, images: np.ndarray, labels: np.ndarray, *,
                           steps: int = 2000, batch_size: int = 128,
                           learning_rate: float = 1e-3) -> DigitClassifier:
  """A `DigitClassifier` trained by Adam on `images float32 [N, 28, 28]` in [0, 1] and
  `labels int [N]` (cross-entropy, random shifts of up to 2 pixels); deterministic for a
  seed on one machine."""
  model = DigitClassifier(rngs=nnx.Rngs(seed))
  graphdef, params = nnx.split(model)
  tx = optax.adam(learning_rate)
  images = jnp.asarray(images, jnp.float32)[..., None]
  labels = jnp.asarray(labels, jnp.int32)

  @jax.jit
  def step(params, opt_state, index):
    key = jax.random.fold_in(jax.random.key(seed), index)
    rows = jax.random.randint(jax.random.fold_in(key, 0), (batch_size,), 0, images.shape[0])
    batch = _shifted(jax.random.fold_in(key, 1), images[rows], 2)

    def loss(params):
      logits = nnx.merge(graphdef, params)(batch)
      return optax.softmax_cross_entropy_with_integer_labels(logits, labels[rows]).mean()

    grads = jax.grad(loss)(params)
    updates, opt_state = tx.update(grads, opt_state)
    return optax.apply_updates(params, updates), opt_state

  opt_state = tx.init(params)
  for index in range(steps):
    params, opt_state = step(params, opt_state, index)
  return nnx.merge(graphdef, params)


def _expected_shapes() -> dict[str, tuple[int, ...]]:
  abstract = nnx.eval_shape(lambda: DigitClassifier(rngs=nnx.Rngs(0)))
  return {name: tuple(leaf.shape) for name, leaf in _flat_state(abstract).items()}


def _flat_state(model) -> dict:
  return msgpack_io.flatten(nnx.to_pure_dict(nnx.state(model, nnx.Param)))


def save(model: DigitClassifier, path) -> None:
  """Writes the classifier's parameters as a flax msgpack file."""
  msgpack_io.write_variables(path, nnx.to_pure_dict(nnx.state(model, nnx.Param)))


def load(path) -> DigitClassifier:
  """Reads a classifier written by `save`, checking every parameter's name and shape.

  Raises:
    ValueError: a missing, malformed or mismatched file (naming the parameter).
  """
  flat = msgpack_io.flatten(msgpack_io.read_variables(path, "digit classifier"))
  msgpack_io.check_shapes(flat, _expected_shapes(), path)
  model = DigitClassifier(rngs=nnx.Rngs(0))
  state = nnx.state(model, nnx.Param)
  nnx.replace_by_pure_dict(state, jax.tree.map(jnp.asarray, msgpack_io.unflatten(flat)))
  nnx.update(model, state)
  return model
