"""Bad arguments at the functional API: one table of calls, each a clear error naming the
argument, the expected shape or range and what was given.

Each section is a list of `Case`s (`LOSS_CASES`, `CHEM_CASES`, `TOKENIZER_CASES`, ...),
concatenated into `CASES`; append a section for another module the same way. A case is an
id ("function/what is wrong"), a zero-argument callable making the bad call, the exception
type, and the substrings its message must contain. Inputs are tiny (V = 5, `[2, 3]` tokens,
a uniform-logits denoiser) so the table runs in a few seconds.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import json
import pathlib
import struct
import tempfile
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import remdm_jax
from remdm_jax import Classifier, Denoiser, sampler_config
from remdm_jax.eval import chem
from remdm_jax.training import losses
from remdm_jax.weights.checkpoint import load_model
from remdm_jax.cli import ScriptParser, UsageError, check_lows
from remdm_jax.text.hf_tokenizer import compile_chat_template, render_chat_template
from remdm_jax.models.llada import LLaDAConfig
from remdm_jax.weights.safetensors_io import read_header
from remdm_jax.schedules import LogLinear
from remdm_jax.text.tokenizers import ByteTokenizer, GPT2Tokenizer, encode_rows, get_tokenizer
from remdm_jax.validation import ArgumentTypeError


class Case(NamedTuple):
  id: str                       # "function/what is wrong"
  call: Callable[[], object]    # makes the bad call
  error: type                   # the exception expected
  message: tuple[str, ...]      # substrings the message must contain


def case(id: str, call: Callable[[], object], error: type, *message: str,
         marks=()) -> pytest.param:
  return pytest.param(Case(id, call, error, message), id=id, marks=marks)


# Losses: V = 5 ids, the last one (4) the mask; x [B, L] = [2, 3].
V, MASK = 5, 4
X = jnp.asarray([[0, 1, 2], [3, 0, 1]], jnp.int32)
KEY = jax.random.key(0)
LABELS = jnp.asarray([0, 1], jnp.int32)


def uniform(z, t):
  """Uniform logits `[B, L, V] float32`."""
  return jnp.zeros(z.shape + (V,), jnp.float32)


def classifier(x, t):
  """Uniform logits over 3 classes, `[B, 3] float32`."""
  return jnp.zeros((x.shape[0], 3), jnp.float32)


def causal(x):
  return jnp.zeros(x.shape + (V,), jnp.float32)


def mdlm(**kwargs):
  args = dict(denoiser=uniform, x=X, key=KEY, mask_id=MASK) | kwargs
  return lambda: losses.mdlm_loss(args.pop("denoiser"), args.pop("x"), args.pop("key"), **args)


def discrete(**kwargs):
  args = dict(x=X, num_steps=4, mask_id=MASK) | kwargs
  return lambda: losses.mdlm_discrete_loss(uniform, args.pop("x"), KEY, **args)


def remdm(**kwargs):
  args = dict(x=X, num_steps=4, sigma_rule="cap", eta=0.1, mask_id=MASK) | kwargs
  return lambda: losses.remdm_loss(uniform, args.pop("x"), KEY, **args)


def classify(**kwargs):
  args = dict(classifier=classifier, x=X, labels=LABELS, mask_id=MASK, vocab_size=V) | kwargs
  return lambda: losses.classifier_loss(args.pop("classifier"), args.pop("x"),
                                        args.pop("labels"), KEY, **args)


def with_id(position, value):
  return X.at[position].set(value)


LOSS_CASES = [
    case("remdm_loss/eta negative", remdm(eta=-1.0), ValueError,
         "eta must be in [0, inf) for sigma_rule 'cap'", "got -1.0"),
    case("remdm_loss/eta nan", remdm(eta=float("nan")), ValueError, "eta", "nan"),
    case("remdm_loss/eta above 1 for rescale", remdm(sigma_rule="rescale", eta=1.5), ValueError,
         "eta must be in [0, 1] for sigma_rule 'rescale'", "got 1.5"),
    case("remdm_loss/eta above 1 for constant", remdm(sigma_rule="constant", eta=2.0),
         ValueError, "eta must be in [0, 1] for sigma_rule 'constant'", "got 2.0"),
    case("remdm_loss/eta with max", remdm(sigma_rule="max", eta=0.5), ValueError,
         "eta does not apply to sigma_rule 'max'", "got 0.5"),
    case("remdm_loss/eta a string", remdm(eta="0.1"), ArgumentTypeError,
         "eta must be a real scalar", "'0.1'"),
    case("remdm_loss/unknown sigma_rule", remdm(sigma_rule="capp"), ValueError,
         "unknown sigma_rule 'capp'", "choose from", "'rescale'"),
    case("remdm_loss/num_steps zero", remdm(num_steps=0), ValueError,
         "num_steps must be in [1, inf)", "got 0"),
    case("mdlm_discrete_loss/num_steps zero", discrete(num_steps=0), ValueError,
         "num_steps must be in [1, inf)", "got 0"),
    case("mdlm_discrete_loss/num_steps negative", discrete(num_steps=-3), ValueError,
         "num_steps must be in [1, inf)", "got -3"),
    case("mdlm_discrete_loss/num_steps fractional", discrete(num_steps=2.5), ArgumentTypeError,
         "num_steps must be an integer", "got 2.5"),
    case("mdlm_loss/valid of floats", mdlm(valid=jnp.full((2, 3), 0.5)), ArgumentTypeError,
         "valid must hold boolean values", "float32"),
    case("mdlm_loss/valid per example", mdlm(x=jnp.zeros((3, 3), jnp.int32),
                                             valid=jnp.ones(3, bool)), ValueError,
         "valid must have shape [B, L]", "[3, 3]", "got [3]"),
    case("mdlm_loss/x id above V", mdlm(x=with_id((1, 2), 7)), ValueError,
         "x must hold ids in [0, 5) other than the mask id 4", "got 7 at index (1, 2)"),
    case("mdlm_loss/x id negative", mdlm(x=with_id((0, 1), -1)), ValueError,
         "x must hold ids in [0, 5)", "got -1 at index (0, 1)"),
    case("mdlm_loss/x holds the mask id", mdlm(x=with_id((0, 0), MASK)), ValueError,
         "other than the mask id 4", "got 4 at index (0, 0)"),
    case("mdlm_loss/x id above a Denoiser's vocab_size",
         mdlm(denoiser=Denoiser.wrap(uniform, vocab_size=V), x=with_id((1, 0), 6)), ValueError,
         "x must hold ids in [0, 5)", "got 6 at index (1, 0)"),
    case("mdlm_loss/mask_id outside the vocabulary", mdlm(mask_id=V), ValueError,
         "mask_id must be in [0, 5)", "V = 5", "got 5"),
    case("mdlm_loss/mask_id negative", mdlm(mask_id=-1), ValueError,
         "mask_id must be in [0, inf)", "got -1"),
    case("mdlm_loss/x of floats", mdlm(x=X.astype(jnp.float32)), ArgumentTypeError,
         "x must hold integer values", "float32"),
    case("mdlm_loss/x of one dimension", mdlm(x=X[0]), ValueError,
         "x must have 2 dimensions [B, L]", "got shape [3]"),
    case("mdlm_loss/x empty batch", mdlm(x=X[:0]), ValueError,
         "x's batch size B must be in [1, inf)", "got 0"),
    case("mdlm_loss/x None", mdlm(x=None), ArgumentTypeError, "x must be an array", "None"),
    case("mdlm_loss/key None", mdlm(key=None), ArgumentTypeError,
         "key must be jax.random.key(seed)", "got None"),
    case("mdlm_loss/key a raw int", mdlm(key=3), ArgumentTypeError,
         "key must be jax.random.key(seed)", "got int 3"),
    case("mdlm_loss/key batch of keys", mdlm(key=jax.random.split(KEY, 2)), ValueError,
         "key must be a single key", "got shape [2]"),
    case("mdlm_loss/eps zero", mdlm(eps=0.0), ValueError, "eps must be in (0, 1)", "got 0.0"),
    case("mdlm_loss/eps one", mdlm(eps=1.0), ValueError, "eps must be in (0, 1)", "got 1.0"),
    case("mdlm_loss/denoiser not a function", mdlm(denoiser=3), ArgumentTypeError,
         "denoiser must be a function", "got 3"),
    case("mdlm_loss/logits without V", mdlm(denoiser=lambda z, t: jnp.zeros(z.shape)),
         ValueError, "the denoiser's logits must have shape [B, L, V] = [2, 3, *]", "got [2, 3]"),
    case("mdlm_loss/integer logits",
         mdlm(denoiser=lambda z, t: jnp.zeros(z.shape + (V,), jnp.int32)), ArgumentTypeError,
         "the denoiser's logits must hold floating-point values", "int32"),
    case("classifier_loss/label out of range", classify(labels=jnp.asarray([0, 3])),
         ValueError, "labels must hold ids in [0, 3)", "got 3 at index 1"),
    case("classifier_loss/label negative", classify(labels=jnp.asarray([-1, 0])), ValueError,
         "labels must hold ids in [0, 3)", "got -1 at index 0"),
    case("classifier_loss/labels of floats", classify(labels=jnp.asarray([0.0, 1.0])),
         ArgumentTypeError, "labels must hold integer values", "float32"),
    case("classifier_loss/labels per position", classify(labels=jnp.zeros((2, 3), jnp.int32)),
         ValueError, "labels must have shape [B]", "[2]", "got [2, 3]"),
    case("classifier_loss/one class", classify(classifier=lambda x, t: jnp.zeros((2, 1))),
         ValueError, "number of classes C must be in [2, inf)", "got 1"),
    case("classifier_loss/logits per position",
         classify(classifier=lambda x, t: jnp.zeros((2, 3, 3))), ValueError,
         "the classifier's logits must have shape [B, C] = [2, *]", "got [2, 3, 3]"),
    case("classifier_loss/x id above vocab_size", classify(x=with_id((0, 2), V)), ValueError,
         "x must hold ids in [0, 5)", "got 5 at index (0, 2)"),
    case("classifier_loss/vocab_size without the mask", classify(vocab_size=MASK), ValueError,
         "mask_id must be in [0, 4)", "got 4"),
    case("classifier_loss/vocab_size fractional", classify(vocab_size=5.0), ArgumentTypeError,
         "vocab_size must be an integer", "got 5.0"),
    case("ar_loss/x of one position", lambda: losses.ar_loss(causal, X[:, :1]), ValueError,
         "x's length L must be in [2, inf)", "got 1"),
    case("ar_loss/x id above V", lambda: losses.ar_loss(causal, with_id((1, 1), V)), ValueError,
         "x must hold ids in [0, 5)", "got 5 at index (1, 1)"),
    case("ar_loss/valid of ints", lambda: losses.ar_loss(causal, X, jnp.ones((2, 3), jnp.int32)),
         ArgumentTypeError, "valid must hold boolean values", "int32"),
    case("ar_loss/logits_fn not a function", lambda: losses.ar_loss(None, X), ArgumentTypeError,
         "logits_fn must be a function", "None"),
    case("nelbo/weight per position",
         lambda: losses.nelbo(uniform(X, None), X, X, jnp.ones((2, 3)), MASK), ValueError,
         "weight must have shape [B]", "[2]", "got [2, 3]"),
    case("nelbo/z_t of another shape",
         lambda: losses.nelbo(uniform(X, None), X, X[:1], jnp.ones(2), MASK), ValueError,
         "z_t must have shape [B, L]", "[2, 3]", "got [1, 3]"),
    case("nelbo/mask_id outside the logits",
         lambda: losses.nelbo(uniform(X, None), X, X, jnp.ones(2), 9), ValueError,
         "mask_id must be in [0, 5)", "got 9"),
    case("autoregressive_nll/logits of another length",
         lambda: losses.autoregressive_nll(jnp.zeros((2, 4, V)), X), ValueError,
         "logits must have shape [B, L, V] = [2, 3, *]", "got [2, 4, 5]"),
    case("corrupt/alpha_t per position",
         lambda: losses.corrupt(KEY, X, jnp.ones((2, 3)), MASK), ValueError,
         "alpha_t must have shape [B]", "got [2, 3]"),
    case("corrupt/mask_id a float", lambda: losses.corrupt(KEY, X, jnp.ones(2), 4.0),
         ArgumentTypeError, "mask_id must be an integer", "got 4.0"),
    case("continuous_times/batch_size zero", lambda: losses.continuous_times(KEY, 0),
         ValueError, "batch_size must be in [1, inf)", "got 0"),
    case("continuous_times/eps negative", lambda: losses.continuous_times(KEY, 2, -0.1),
         ValueError, "eps must be in (0, 1)", "got -0.1"),
    case("discrete_steps/num_steps zero", lambda: losses.discrete_steps(KEY, 2, 0), ValueError,
         "num_steps must be in [1, inf)", "got 0"),
    case("antithetic_uniform/key a seed", lambda: losses.antithetic_uniform(0, 2),
         ArgumentTypeError, "key must be jax.random.key(seed)", "got int 0"),
    case("remdm_discrete_weight/step of floats",
         lambda: losses.remdm_discrete_weight(LogLinear(), jnp.ones(2), 4),
         ArgumentTypeError, "step must hold integer values", "float32"),
    case("remdm_discrete_weight/eta negative",
         lambda: losses.remdm_discrete_weight(LogLinear(), jnp.ones(2, jnp.int32), 4,
                                              "cap", -0.5), ValueError,
         "eta must be in [0, inf) for sigma_rule 'cap'", "got -0.5"),
    case("mdlm_continuous_weight/t of ints",
         lambda: losses.mdlm_continuous_weight(LogLinear(), jnp.ones(2, jnp.int32)),
         ArgumentTypeError, "t must hold floating-point values", "int32"),
]


# Chem (needs RDKit, the chem extra): lists of SMILES, property names, percentiles.
NEEDS_RDKIT = pytest.mark.skipif(importlib.util.find_spec("rdkit") is None,
                                 reason='the chem extra: pip install -e ".[chem]"')


def chem_case(*args, **kwargs):
  return case(*args, **kwargs, marks=NEEDS_RDKIT)


def training():
  return chem.canonical_set(["CCO", "c1ccccc1"])


CHEM_CASES = [
    chem_case("property_values/a bare string", lambda: chem.property_values("CCO", "qed"),
              ArgumentTypeError, "smiles must be a list of strings", "got str 'CCO'"),
    chem_case("property_values/a non-string item",
              lambda: chem.property_values(["CCO", None], "qed"), ArgumentTypeError,
              "smiles must be a list of strings", "NoneType None at index 1"),
    chem_case("property_values/unknown prop", lambda: chem.property_values(["CCO"], "logp"),
              ValueError, "unknown prop 'logp'", "choose from ['qed', 'rings']"),
    chem_case("canonical_set/a bare string", lambda: chem.canonical_set("CCO"),
              ArgumentTypeError, "smiles must be a list of strings", "got str 'CCO'"),
    chem_case("canonical_set/None", lambda: chem.canonical_set(None), ArgumentTypeError,
              "smiles must be a list of strings", "got NoneType"),
    chem_case("generation_metrics/samples a bare string",
              lambda: chem.generation_metrics("CCO", training(), "qed"), ArgumentTypeError,
              "samples must be a list of strings", "got str 'CCO'"),
    chem_case("generation_metrics/samples empty",
              lambda: chem.generation_metrics([], training(), "qed"), ValueError,
              "samples must be a non-empty list", "got 0"),
    chem_case("generation_metrics/training a bare string",
              lambda: chem.generation_metrics(["CCO"], "CCO", "qed"), ArgumentTypeError,
              "training must be a list of strings", "got str 'CCO'"),
    chem_case("generation_metrics/unknown prop",
              lambda: chem.generation_metrics(["CCO"], training(), "logp"), ValueError,
              "unknown prop 'logp'", "choose from ['qed', 'rings']"),
    chem_case("class_labels/percentile above 100",
              lambda: chem.class_labels(np.arange(4.0), 101.0), ValueError,
              "percentile must be in [0, 100]", "got 101.0"),
    chem_case("class_labels/percentile negative",
              lambda: chem.class_labels(np.arange(4.0), -1.0), ValueError,
              "percentile must be in [0, 100]", "got -1.0"),
    chem_case("class_labels/values of two dimensions",
              lambda: chem.class_labels(np.zeros((2, 2))), ValueError,
              "values must have 1 dimension [N]", "got shape [2, 2]"),
    chem_case("class_labels/values of booleans", lambda: chem.class_labels([True, False]),
              ArgumentTypeError, "values must hold real numbers", "got dtype bool"),
    chem_case("class_labels/no finite value", lambda: chem.class_labels([np.nan]), ValueError,
              "values has no finite entry"),
    chem_case("split_labels/validation a bare string",
              lambda: chem.split_labels(["C", "CC"], "CC", "rings"), ArgumentTypeError,
              "validation must be a list of strings", "got str 'CC'"),
    chem_case("split_labels/percentile above 100",
              lambda: chem.split_labels(["C"], ["CC"], "rings", 150.0), ValueError,
              "percentile must be in [0, 100]", "got 150.0"),
    chem_case("molecule/not a string", lambda: chem.molecule(3), ArgumentTypeError,
              "smiles must be a string", "got int 3"),
    chem_case("canonical/None", lambda: chem.canonical(None), ArgumentTypeError,
              "smiles must be a string", "got NoneType None"),
    chem_case("property_of/no molecule", lambda: chem.property_of(None, "qed"),
              ArgumentTypeError, "mol must be an RDKit molecule", "got None"),
    chem_case("property_of/unknown prop",
              lambda: chem.property_of(chem.molecule("CCO"), "logp"), ValueError,
              "unknown prop 'logp'", "choose from ['qed', 'rings']"),
]


# Tokenizers: text in, integer ids in [0, vocab_size) out and back.
BYTES = ByteTokenizer()


@functools.cache
def gpt2() -> GPT2Tokenizer:
  return GPT2Tokenizer()


TOKENIZER_CASES = [
    case("ByteTokenizer.decode/id above the vocabulary", lambda: BYTES.decode([72, 300]),
         ValueError, "ids must hold ids in [0, 259)", "got 300 at index 1"),
    case("ByteTokenizer.decode/id negative", lambda: BYTES.decode(np.array([-1, 72])),
         ValueError, "ids must hold ids in [0, 259)", "got -1 at index 0"),
    case("ByteTokenizer.decode/a float id", lambda: BYTES.decode([72, 105.7]),
         ArgumentTypeError, "ids must be a list of integer token ids", "float 105.7 at index 1"),
    case("ByteTokenizer.decode/an array of floats", lambda: BYTES.decode(np.array([72.0])),
         ArgumentTypeError, "ids must hold integer values", "float64"),
    case("ByteTokenizer.decode/a string id", lambda: BYTES.decode(["a"]), ArgumentTypeError,
         "ids must be a list of integer token ids", "str 'a' at index 0"),
    case("ByteTokenizer.decode/a string", lambda: BYTES.decode("Hi"), ArgumentTypeError,
         "ids must be a list of integer token ids", "got str 'Hi'"),
    case("ByteTokenizer.decode/None", lambda: BYTES.decode(None), ArgumentTypeError,
         "ids must be a list of integer token ids", "got NoneType"),
    case("ByteTokenizer.decode/a batch", lambda: BYTES.decode(np.zeros((2, 3), np.int32)),
         ValueError, "ids must have 1 dimension [N]", "got shape [2, 3]"),
    case("ByteTokenizer.encode/None", lambda: BYTES.encode(None), ArgumentTypeError,
         "text must be a string", "got NoneType None"),
    case("ByteTokenizer.encode/bytes", lambda: BYTES.encode(b"Hi"), ArgumentTypeError,
         "text must be a string", "got bytes b'Hi'"),
    case("GPT2Tokenizer.decode/id above the vocabulary", lambda: gpt2().decode([15496, 50258]),
         ValueError, "ids must hold ids in [0, 50258)", "got 50258 at index 1"),
    case("GPT2Tokenizer.decode/a float id", lambda: gpt2().decode([1.0]), ArgumentTypeError,
         "ids must be a list of integer token ids", "float 1.0 at index 0"),
    case("GPT2Tokenizer.encode/None", lambda: gpt2().encode(None), ArgumentTypeError,
         "text must be a string", "got NoneType None"),
    case("GPT2Tokenizer/directory a number", lambda: GPT2Tokenizer(3), ArgumentTypeError,
         "directory must be a path", "got 3"),
    case("encode_rows/texts a bare string", lambda: encode_rows(BYTES, "abc", 8, fill=257),
         ArgumentTypeError, "texts must be a list of strings", "got str 'abc'"),
    case("encode_rows/seq_len zero", lambda: encode_rows(BYTES, ["abc"], 0, fill=257),
         ValueError, "seq_len must be in [1, inf)", "got 0"),
    case("encode_rows/fill outside the vocabulary",
         lambda: encode_rows(BYTES, ["abc"], 8, fill=259), ValueError,
         "fill must be in [0, 258]", "got 259"),
    case("encode_rows/eos not a bool", lambda: encode_rows(BYTES, ["abc"], 8, fill=257, eos=1),
         ArgumentTypeError, "eos must be true or false", "got 1"),
    case("encode_rows/not a tokenizer", lambda: encode_rows("bytes", ["abc"], 8, fill=257),
         ArgumentTypeError, "tokenizer must have encode and decode", "'bytes'"),
    case("encode_rows/row too long", lambda: encode_rows(BYTES, ["abcdefgh"], 4, fill=257),
         ValueError, "example 0 needs 9 positions", "seq_len=4"),
]



# Sampling: the same V = 5 (mask 4); a [2, 3] batch of 2 steps, a uniform denoiser.

SAMPLER_CFG = sampler_config("cap", eta=0.05, num_steps=2)
SIZES = dict(batch_size=2, seq_len=3, mask_id=MASK)


def sample(**kwargs):
  """`remdm_jax.sample` of the uniform denoiser, with `kwargs` changed."""
  args = dict(key=KEY, denoiser=uniform, config=SAMPLER_CFG, **SIZES)
  args.update(kwargs)
  return lambda: remdm_jax.sample(args.pop("key"), args.pop("denoiser"), args.pop("config"),
                                  **args)


def sampler_call(*args, config=SAMPLER_CFG, denoiser=uniform, **kwargs):
  """A `make_sampler` sampler called with `args` and `kwargs` (the key first)."""
  return lambda: remdm_jax.make_sampler(denoiser, config, **SIZES)(*args, **kwargs)


def plan_of(cfg):
  return remdm_jax.build_plan(cfg)[0]


WEIGHTED = Denoiser(lambda params, z, t: params["w"] * jnp.ones(z.shape + (V,), jnp.float32))


def three_classes(x, t):
  return jnp.mean(x, axis=1)[:, :3] * jnp.arange(1.0, 4.0)[None]     # [B, 3] float32


def guided(classifier_fn=three_classes, **kwargs):
  """`classifier_guidance` of the uniform denoiser, with `kwargs` changed."""
  args = {"target": 1, "gamma": 2.0, "mask_id": MASK, **kwargs}
  return lambda: remdm_jax.classifier_guidance(uniform, classifier_fn, **args)


def sample_guided(classifier_fn=three_classes, mask_id=MASK, **kwargs):
  """A sample of a guided denoiser (errors found while the sampler traces it)."""
  return lambda: remdm_jax.sample(KEY, guided(classifier_fn, **kwargs)(), SAMPLER_CFG,
                                  batch_size=2, seq_len=3, mask_id=mask_id)


SAMPLER_CASES = [
    case("sample/key None", sample(key=None), ArgumentTypeError,
         "key must be jax.random.key(seed)", "got NoneType"),
    case("sample/key a seed", sample(key=3), ArgumentTypeError, "got int 3",
         "jax.random.key(3)"),
    case("sample/key of floats", sample(key=jnp.zeros((3,))), ValueError,
         "key must be jax.random.key(seed)", "got float32[3]"),
    case("sample/batch_size zero", sample(batch_size=0), ValueError,
         "batch_size must be in [1, inf)", "got 0"),
    case("sample/batch_size a float", sample(batch_size=4.0), ArgumentTypeError,
         "batch_size must be an integer", "got 4.0"),
    case("sample/seq_len negative", sample(seq_len=-1), ValueError,
         "seq_len must be in [1, inf)", "got -1"),
    case("sample/mask_id outside the logits", sample(mask_id=5), ValueError,
         "mask_id must be in [0, V) = [0, 5)", "got 5"),
    case("sample/prompt of another length", sample(prompt=jnp.zeros((2, 4), jnp.int32)),
         ValueError, "prompt must have shape [batch_size, seq_len] = [2, 3]", "got [2, 4]"),
    case("sample/prompt id above V", sample(prompt=jnp.full((2, 3), 9, jnp.int32)), ValueError,
         "prompt ids must be in [0, V) = [0, 5)", "[9, 9]"),
    case("sample/prompt of floats", sample(prompt=jnp.zeros((2, 3))), ValueError,
         "prompt must hold integer ids", "float32"),
    case("sample/first_index fractional", sample(first_index=1.5), ArgumentTypeError,
         "first_index must be an integer", "got 1.5"),
    case("sample/first_index negative", sample(first_index=-1), ValueError,
         "first_index must be in [0, inf)", "got -1"),
    case("sample/first_index an array", sample(first_index=jnp.zeros((2,), jnp.int32)),
         ValueError, "first_index must be an integer scalar", "int32[2]"),
    case("sample/config a dict", sample(config={"strategy": "cap"}), ArgumentTypeError,
         "config must be a SamplerConfig", "got dict"),
    case("sample/denoiser not a function", sample(denoiser="model"), TypeError,
         "denoiser must be a function (z [B, L] int32", "'model'"),
    case("sample/logits without the length", sample(
        denoiser=lambda z, t: jnp.zeros(z.shape[:1] + (V,))), ValueError,
         "denoiser must return logits [batch_size, seq_len, V] = [2, 3, V]", "got [2, 5]"),
    case("sample/logits of another batch", sample(
        denoiser=lambda z, t: jnp.zeros((1,) + z.shape[1:] + (V,))), ValueError,
         "denoiser must return logits [batch_size, seq_len, V]", "got [1, 3, 5]"),
    case("sample/integer logits", sample(
        denoiser=lambda z, t: jnp.zeros(z.shape + (V,), jnp.int32)), ValueError,
         "denoiser must return floating logits", "int32"),
    case("sample/logits beside the declared vocabulary", sample(
        denoiser=Denoiser.wrap(uniform, vocab_size=7)), ValueError,
         "denoiser declares vocab_size 7", "V = 5"),
    case("sample/return_trajectory a string", sample(return_trajectory="yes"),
         ArgumentTypeError, "return_trajectory must be true or false", "'yes'"),
    case("sample/batch_sharding a string", sample(batch_sharding="data"), ArgumentTypeError,
         "batch_sharding must be a jax.sharding.Sharding", "got str"),
    case("sample/cache for a denoiser that reads t",
         sample(config=SAMPLER_CFG.with_options(cache=True)), ValueError,
         "cache=True", "reads_t=True", "Denoiser.wrap(fn, reads_t=False)"),
    case("make_sampler/on_step not a function", lambda: remdm_jax.make_sampler(
        uniform, SAMPLER_CFG, on_step=3, **SIZES), ArgumentTypeError,
         "on_step must be a function", "got 3"),
    case("Sampler/params for a plain function", sampler_call(KEY, {"w": 1.0}), ValueError,
         "params were given, but this denoiser is a plain function"),
    case("Sampler/params missing", sampler_call(KEY, denoiser=WEIGHTED), ValueError,
         "params: this Denoiser(apply) holds no parameters", "Denoiser.wrap(fn)"),
    case("Sampler/params of another structure", sampler_call(
        KEY, {"v": jnp.float32(1)}, denoiser=WEIGHTED.with_params({"w": jnp.float32(1)})),
         ValueError, "params must have the structure of the denoiser's own parameters",
         "'v'", "'w'"),
    case("top_p_filter/top_p above 1", lambda: remdm_jax.top_p_filter(jnp.ones((2, 3)) / 3, 1.5),
         ValueError, "top_p must be in (0, 1]", "got 1.5"),
    case("top_p_filter/top_p nan", lambda: remdm_jax.top_p_filter(jnp.ones((2, 3)) / 3, jnp.nan),
         ValueError, "top_p must be a finite number"),
    case("top_p_filter/integer probabilities", lambda: remdm_jax.top_p_filter(
        jnp.ones((2, 3), jnp.int32), 0.5), ValueError, "probs must be a floating"),
    case("get_schedule/option of another schedule", lambda: remdm_jax.get_schedule(
        "cosine", power=2.0), ValueError, "schedule 'cosine' takes ['eps']"),
    case("Sampler/first_index past int32", sampler_call(KEY, first_index=2 ** 31 - 1),
         ValueError, "first_index must be in [0, 2147483646]", "example indices are int32"),
]

PLAN_CASES = [
    case("Sampler/plan a dict", sampler_call(KEY, plan={}), ArgumentTypeError,
         "plan must be a remdm_jax.Plan", "got dict"),
    case("Sampler/plan and rule as a tuple", sampler_call(
        KEY, plan=remdm_jax.build_plan(SAMPLER_CFG)), ArgumentTypeError,
         "plan must be a remdm_jax.Plan", "got tuple"),
    case("Sampler/plan with top-p where the sampler has none", sampler_call(
        KEY, plan=plan_of(SAMPLER_CFG.with_options(top_p=0.5))), ValueError,
         "other static settings", "use_top_p: False -> True", "top_p < 1"),
    case("Sampler/plan of a topk config", sampler_call(
        KEY, plan=plan_of(sampler_config("topk", num_steps=2))), ValueError,
         "other static settings", "select: 'bernoulli' -> 'rank'"),
    case("Sampler/plan of a conf config", sampler_call(
        KEY, plan=plan_of(sampler_config("conf", num_steps=2))), ValueError,
         "other static settings", "conf_score: None -> 'prob'"),
    case("Sampler/plan of other steps", sampler_call(
        KEY, plan=plan_of(SAMPLER_CFG.with_options(num_steps=4))), ValueError,
         "other static settings", "steps: 2 -> 4"),
    case("Sampler/plan of nan temperature", sampler_call(
        KEY, plan=dataclasses.replace(plan_of(SAMPLER_CFG), temperature=jnp.float32(jnp.nan))),
         ValueError, "plan.temperature must be a finite number", "nan"),
    case("Sampler/plan of top_p zero", sampler_call(
        KEY, plan=dataclasses.replace(plan_of(SAMPLER_CFG), top_p=jnp.float32(0.0))),
         ValueError, "plan.top_p must be in (0, 1]", "got 0.0"),
    case("sample_with_plan/rule of another plan", lambda: remdm_jax.sample_with_plan(
        KEY, uniform, plan_of(SAMPLER_CFG), remdm_jax.build_plan(sampler_config("topk"))[1],
        **SIZES), ValueError, "rule is not the plan's own", "select: 'rank' -> 'bernoulli'"),
    case("SamplerConfig/top_p_mode without top-p", lambda: sampler_config(
        "cap", eta=0.05, top_p_mode="standard"), ValueError,
         "top_p_mode='standard' applies only with top_p < 1"),
    case("SamplerConfig/top_p_impl without top-p", lambda: sampler_config(top_p_impl="sort"),
         ValueError, "top_p_impl='sort' applies only with top_p < 1"),
    case("build_plan/config a dict", lambda: remdm_jax.build_plan({"strategy": "cap"}),
         ArgumentTypeError, "config must be a SamplerConfig", "got dict"),
]

GUIDANCE_CASES = [
    case("classifier_guidance/target outside the declared classes", guided(
        Classifier(lambda params, x, t: three_classes(x, t), num_classes=3), target=3),
         ValueError, "target must hold classes in [0, 3) (the classifier's classes)", "got 3"),
    case("classifier_guidance/target negative", guided(target=-1), ValueError,
         "target must hold classes in [0, inf)", "got -1"),
    case("classifier_guidance/target of floats", guided(target=1.5), ValueError,
         "target must be a class id (an int) or [B] integer ids", "1.5"),
    case("classifier_guidance/target per position", guided(target=np.zeros((2, 3), int)),
         ValueError, "target must be a class id (an int) or [B] integer ids"),
    case("classifier_guidance/target of another batch", sample_guided(
        target=np.array([0, 1, 2])), ValueError,
         "target must be one class or [B] = [2] classes", "got shape [3]"),
    case("classifier_guidance/target outside undeclared classes", sample_guided(target=3),
         ValueError, "target must hold classes in [0, 3)", "logits [B, 3]", "got 3"),
    case("classifier_guidance/target 5 of a two-class function", sample_guided(
        lambda x, t: three_classes(x, t)[:, :2], target=5), ValueError,
         "target must hold classes in [0, 2)", "logits [B, 2]", "got 5"),
    case("classifier_guidance/a target of the batch outside the classes", sample_guided(
        target=np.array([0, 4])), ValueError, "target must hold classes in [0, 3)", "got 4"),
    case("classifier_guidance/target outside the classes, called directly", lambda: guided(
        target=5)()(jnp.full((2, 3), MASK, jnp.int32), jnp.ones((2,))), ValueError,
         "target must hold classes in [0, 3) (the classifier's classes)", "got 5"),
    case("classifier_guidance/mask_id outside the logits, called directly", lambda: guided(
        mask_id=9)()(jnp.full((2, 3), 4, jnp.int32), jnp.ones((2,))), ValueError,
         "mask_id must be in [0, V) = [0, 5) (the denoiser's logits)", "got 9"),
    case("classifier_guidance/one class", sample_guided(lambda x, t: three_classes(x, t)[:, :1],
                                                        target=0),
         ValueError, "classifier must return logits [B, C] with C >= 2", "got [2, 1]"),
    case("classifier_guidance/logits per position", sample_guided(
        lambda x, t: jnp.zeros(x.shape[:2] + (3,))), ValueError,
         "classifier must return logits [B, C]", "got [2, 3, 3]"),
    case("classifier_guidance/logits of one dimension", sample_guided(
        lambda x, t: jnp.zeros(x.shape[:1])), ValueError,
         "classifier must return logits [B, C]", "got [2]"),
    case("classifier_guidance/integer logits", sample_guided(
        lambda x, t: three_classes(x, t).astype(jnp.int32)), ValueError,
         "classifier must return floating logits", "int32"),
    case("classifier_guidance/logits beside the declared classes", sample_guided(
        Classifier(lambda params, x, t: jnp.zeros((x.shape[0], 4)), num_classes=3)),
         ValueError, "classifier declares num_classes 3", "[2, 4]"),
    case("classifier_guidance/mask_id other than the sampler's", sample_guided(mask_id=3),
         ValueError, "mask_id 3 differs from the denoiser's own mask id 4"),
    case("classifier_guidance/mask_id outside the vocabulary", lambda: (
        remdm_jax.classifier_guidance(Denoiser.wrap(uniform, vocab_size=V), three_classes,
                                      target=0, gamma=1.0, mask_id=9)),
         ValueError, "mask_id must be in [0, 4] (the denoiser's vocabulary)", "got 9"),
    case("classifier_guidance/mask_id negative", guided(mask_id=-1), ValueError,
         "mask_id must be in [0, inf)", "got -1"),
    case("classifier_guidance/gamma nan", guided(gamma=float("nan")), ValueError,
         "gamma must be a finite number", "nan"),
    case("classifier_guidance/unknown form", guided(form="taylor"), ValueError,
         "unknown form 'taylor'", "exact", "gradient"),
    case("classifier_guidance/classifier not a function", guided(None), TypeError,
         "classifier must be a function (x [B, L, V] float32"),
    case("classifier_free_guidance/gamma inf", lambda: remdm_jax.classifier_free_guidance(
        uniform, uniform, float("inf")), ValueError, "gamma must be a finite number"),
    case("classifier_free_guidance/declared vocabularies differ", lambda: (
        remdm_jax.classifier_free_guidance(Denoiser.wrap(uniform, vocab_size=5),
                                           Denoiser.wrap(uniform, vocab_size=7), 1.0)),
         ValueError, "vocab_size values differ: [5, 7]"),
    case("classifier_free_guidance/logits of two shapes", sample(
        denoiser=remdm_jax.classifier_free_guidance(
            uniform, lambda z, t: jnp.zeros(z.shape + (V + 1,)), 1.0)), ValueError,
         "needs logits of one shape (one vocabulary) from both denoisers", "[2, 3, 5]", "[2, 3, 6]"),
    case("classifier_free_guidance/denoiser None", lambda: (
        remdm_jax.classifier_free_guidance(None, None, 1.0)), TypeError,
         "denoiser must be a function (z [B, L] int32"),
    case("Denoiser/vocab_size zero", lambda: Denoiser(uniform, vocab_size=0), ValueError,
         "Denoiser.vocab_size must be >= 1", "got 0"),
    case("Denoiser/mask_id fractional", lambda: Denoiser(uniform, mask_id=1.5), TypeError,
         "Denoiser.mask_id must be an integer or None", "1.5"),
    case("Denoiser/half the split contract", lambda: Denoiser(uniform, features_apply=uniform),
         ValueError, "needs both features_apply and head_apply"),
    case("Classifier/one class", lambda: Classifier(three_classes, num_classes=1), ValueError,
         "Classifier.num_classes must be >= 2", "got 1"),
    case("Cbg/gamma a string", lambda: remdm_jax.Cbg(gamma="2"), ArgumentTypeError,
         "gamma must be a number", "'2'"),
    case("Cfg/denoiser without a target", lambda: remdm_jax.Cfg().denoiser(
        lambda label: uniform, target=None, mask_id=MASK), ValueError,
         "guidance 'cfg' needs a target class"),
]


# Block decoding (strategy "llada"): the uniform denoiser, V = 5, mask 4, [B, L] = [2, 3].
BLOCK_CFG = sampler_config("llada", num_steps=2, block_length=2, temperature=0.0)


def llada(**options):
  return lambda: BLOCK_CFG.with_options(**options)


BLOCK_CASES = [
    case("llada/block_length zero", llada(block_length=0), ValueError,
         "block_length must be in [1, inf) for strategy 'llada'", "got 0"),
    case("llada/unknown remasking", llada(remasking="lowest"), ValueError,
         "unknown remasking 'lowest'", "'low_confidence', 'random'"),
    case("llada/unknown kv_cache", llada(kv_cache="full"), ValueError,
         "unknown kv_cache 'full'", "'dual', 'none', 'prefix'"),
    case("llada/threshold above 1", llada(threshold=1.5), ValueError,
         "threshold must be in [0, 1] for strategy 'llada'", "got 1.5"),
    case("llada/negative cfg_scale", llada(cfg_scale=-1.0), ValueError,
         "cfg_scale must be in [0, inf)", "got -1.0"),
    case("llada/negative temperature", llada(temperature=-0.5), ValueError,
         "temperature must be in [0, inf)", "got -0.5"),
    case("llada/eos_id below -1", llada(eos_id=-2), ValueError,
         "eos_id must be in [-1, inf)", "got -2"),
    case("llada/remdm options without remdm_number", llada(remdm_steps=4), ValueError,
         "remdm_steps=4 apply only with remdm_number > 0"),
    case("llada/remdm_number past the block", llada(remdm_number=3), ValueError,
         "remdm_number must be in [0, block_length] = [0, 2]", "got 3"),
    case("llada/remdm_decode past the block", llada(remdm_number=1, remdm_decode=5), ValueError,
         "remdm_decode must be in [0, block_length] = [0, 2]", "got 5"),
    case("llada/no remasking steps", llada(remdm_number=1, remdm_steps=0), ValueError,
         "remdm_steps must be in [1, inf)", "remdm_number=1", "got 0"),
    case("llada/remdm_start past num_steps", llada(remdm_number=1, remdm_start=3), ValueError,
         "remdm_start must be in [0, num_steps] = [0, 2]", "got 3"),
    case("llada/default remdm_start past num_steps", llada(remdm_number=1, block_length=32),
         ValueError, "got 28 (the default block_length * 7 // 8; set remdm_start)"),
    case("llada/unknown remask_sigma", llada(remask_sigma="loop"), ValueError,
         "unknown remask_sigma 'loop'", "'cap', 'conf', 'none', 'rescale'"),
    case("llada/cap without eta", llada(remask_sigma="cap"), ValueError,
         "eta must be in (0, inf) for remask_sigma 'cap'", "got 0.0"),
    case("llada/rescale eta above 1", llada(remask_sigma="rescale", eta=1.5), ValueError,
         "eta must be in (0, 1] for remask_sigma 'rescale'", "got 1.5"),
    case("llada/eta without remask_sigma", llada(eta=0.1), ValueError,
         "eta applies only with remask_sigma 'cap' or 'rescale'", "eta=0.1"),
    case("llada/two remasking rules", llada(remask_sigma="conf", remdm_number=1,
                                            remdm_start=1), ValueError,
         "remask_sigma='conf' and remdm_number=1 are two remasking rules"),
    case("llada/eos_id the mask id", sample(config=BLOCK_CFG.with_options(eos_id=4)),
         ValueError, "eos_id must not be the mask id 4"),
    case("llada/cfg_scale without a prompt", sample(config=BLOCK_CFG.with_options(
        cfg_scale=1.0)), ValueError, "cfg_scale > 0 guides by masking the prompt",
         "no prompt"),
    case("llada/plan threshold 0 where the sampler thresholds", sampler_call(
        KEY, config=BLOCK_CFG.with_options(threshold=0.5), plan=dataclasses.replace(
            plan_of(BLOCK_CFG.with_options(threshold=0.5)), threshold=jnp.float32(0.0))),
         ValueError, "plan.threshold must be in (0, 1]", "got 0.0"),
    case("llada/top_p that block decoding ignores", llada(top_p=0.9), ValueError,
         "top_p=0.9 does not apply to block decoding", "leave it out"),
    case("llada/cache that block decoding ignores", llada(cache=True), ValueError,
         "cache=True does not apply to block decoding"),
    case("llada/eos_id outside V", sample(config=BLOCK_CFG.with_options(eos_id=5)),
         ValueError, "eos_id must be in [0, V) = [0, 5) or -1", "got 5"),
    case("llada/prompt with a mask inside", sample(
        config=BLOCK_CFG, prompt=jnp.asarray([[0, 4, 1], [0, 1, 4]], jnp.int32)), ValueError,
         "prompt row 0 has the mask id at position 1", "decodes the masked tail"),
    case("llada/plan with temperature 0 where the sampler draws", sampler_call(
        KEY, config=BLOCK_CFG.with_options(temperature=1.0),
        plan=plan_of(BLOCK_CFG)), ValueError, "other static settings",
         "greedy: False -> True"),
    case("llada/plan of the diffusion sampler", sampler_call(
        KEY, config=BLOCK_CFG, plan=plan_of(SAMPLER_CFG)), ValueError,
         "kind: BlockPlan -> Plan"),
    case("llada/plan threshold nan", sampler_call(KEY, config=BLOCK_CFG, plan=dataclasses.replace(
        plan_of(BLOCK_CFG), threshold=jnp.float32(jnp.nan))), ValueError,
         "plan.threshold must be a finite number", "got nan"),
]

# Files: a model folder written into a fresh temporary folder, then read.
def in_folder(files: dict[str, object], read: Callable[[pathlib.Path], object]):
  """`read(folder)` of a temporary folder holding `files` (name -> bytes, or JSON)."""
  def call():
    with tempfile.TemporaryDirectory() as tmp:
      folder = pathlib.Path(tmp) / "model"
      folder.mkdir()
      for name, content in files.items():
        data = content if isinstance(content, bytes) else json.dumps(content).encode()
        (folder / name).write_bytes(data)
      return read(folder)
  return call


def safetensors_bytes(header: dict, data_bytes: int) -> bytes:
  """A safetensors file of this header and `data_bytes` zero bytes of data."""
  text = json.dumps(header).encode()
  return struct.pack("<Q", len(text)) + text + bytes(data_bytes)


def f32(shape, begin, end):
  return {"dtype": "F32", "shape": shape, "data_offsets": [begin, end]}


def header_of(header: dict, data_bytes: int):
  return in_folder({"t.safetensors": safetensors_bytes(header, data_bytes)},
                   lambda folder: read_header(folder / "t.safetensors"))


WTE = "model.transformer.wte.weight"
LLADA_CONFIG = {"model_type": "llada", "block_type": "llama", "layer_norm_type": "rms",
                "activation_type": "silu", "rope": True, "d_model": 8, "n_layers": 1,
                "n_heads": 2, "vocab_size": 8, "embedding_size": 8, "mask_token_id": 7}


def indexed(shard: str):
  """load_model of a LLaDA folder whose index places the embedding in `shard`."""
  return in_folder({"config.json": LLADA_CONFIG,
                    "model.safetensors.index.json": {"weight_map": {WTE: shard}}}, load_model)


def from_hf(**fields):
  config = LLADA_CONFIG | fields
  return lambda: LLaDAConfig.from_hf({k: v for k, v in config.items() if v is not ...})


FILE_CASES = [
    case("load_model/shard outside the folder", indexed(
        "../outside/model-00003-of-00005.safetensors"), ValueError, f"weight_map['{WTE}']",
         "'../outside/model-00003-of-00005.safetensors'", "not a plain shard file name"),
    case("load_model/shard an absolute path", indexed("/etc/passwd"), ValueError,
         f"weight_map['{WTE}'] = '/etc/passwd' is not a plain shard file name"),
    case("load_model/shard up the tree", indexed("../../../../etc/passwd"), ValueError,
         "'../../../../etc/passwd' is not a plain shard file name"),
    case("load_model/shard the parent folder", indexed(".."), ValueError,
         "= '..' is not a plain shard file name"),
    case("load_model/shard a Windows path", indexed("..\\x.safetensors"), ValueError,
         "not a plain shard file name"),
    case("load_model/pickled weights only", in_folder(
        {"config.json": LLADA_CONFIG, "pytorch_model.bin": b"pickle"}, load_model), ValueError,
         "pytorch_model.bin", "never read", "must be safetensors"),
    case("read_header/overlapping tensors", header_of(
        {"a": f32([2], 0, 8), "b": f32([2], 4, 12)}, 12), ValueError,
         "tensors 'a'", "and 'b'", "overlap"),
    case("read_header/a tensor inside another", header_of(
        {"a": f32([4], 0, 16), "b": f32([1], 4, 8)}, 16), ValueError, "'a'", "'b'", "overlap"),
    case("read_header/byte range longer than the shape", header_of({"a": f32([2], 0, 12)}, 12),
         ValueError, "tensor 'a' of shape [2] F32 needs 8 bytes", "give 12"),
    case("read_header/byte range shorter than the shape", header_of({"a": f32([3], 0, 8)}, 12),
         ValueError, "tensor 'a' of shape [3] F32 needs 12 bytes", "give 8"),
    case("LLaDAConfig.from_hf/no mask_token_id", from_hf(mask_token_id=...), ValueError,
         "config.json has no mask_token_id (absent or null)", "50256", "set mask_token_id"),
    case("LLaDAConfig.from_hf/vocab_size above embedding_size", from_hf(vocab_size=9),
         ValueError, "vocab_size=9 is larger than embedding_size=8"),
    case("LLaDAConfig.from_hf/vocab_size above the default embedding_size", from_hf(
        vocab_size=60_000, embedding_size=...), ValueError, "vocab_size=60000",
         "embedding_size=absent, the default 50304"),
    case("get_tokenizer/a LLaDA folder without tokenizer.json", in_folder(
        {"config.json": LLADA_CONFIG}, get_tokenizer), ValueError,
         "no tokenizer.json in this folder"),
]

# Chat templates: every failure, compiling or rendering, one line naming the template's file.
HELLO = [{"role": "user", "content": "Hi"}]
NEEDS_JINJA = pytest.mark.skipif(importlib.util.find_spec("jinja2") is None,
                                 reason='the llada extra: pip install -e ".[llada]"')


def rendered(source: str, messages=HELLO):
  return lambda: render_chat_template(
      compile_chat_template(source, origin="chat_template.jinja"), messages, {},
      origin="chat_template.jinja")


def template_case(*args, **kwargs):
  return case(*args, **kwargs, marks=NEEDS_JINJA)


TEMPLATE_CASES = [
    template_case("chat template/a range past the sandbox", rendered(
        "{% for i in range(10**9) %}x{% endfor %}"), ValueError,
                  "chat_template.jinja: the chat template failed: OverflowError"),
    template_case("chat template/an include", rendered("{% include 'other.jinja' %}"),
                  ValueError, "chat_template.jinja: the chat template failed: TypeError"),
    template_case("chat template/an undefined function", rendered("{{ nope() }}"), ValueError,
                  "chat_template.jinja: the chat template failed: UndefinedError"),
    template_case("chat template/a division by zero", rendered("{{ 1 // 0 }}"), ValueError,
                  "chat_template.jinja: the chat template failed: ZeroDivisionError"),
    template_case("chat template/not Jinja", rendered("{% for %}"), ValueError,
                  "chat_template.jinja: the chat template is not valid Jinja", "line 1"),
    template_case("chat template/raise_exception", rendered("{{ raise_exception('no') }}"),
                  ValueError, "chat_template.jinja: the chat template refused the messages: no"),
    template_case("chat template/a message without a role", rendered(
        "x", [{"content": "Hi"}]), ValueError, "messages[0]['role'] must be a string",
                  "got absent"),
    template_case("chat template/content None", rendered(
        "x", HELLO + [{"role": "user", "content": None}]), ValueError,
                  "messages[1]['content'] must be a string", "got None"),
]

# Scripts in sample/ name their own flags.
def script_flags(*argv: str):
  parser = ScriptParser()
  parser.add_argument("--problems", type=int, default=16)
  parser.add_argument("--steps", type=int, nargs="*", default=None)
  return lambda: check_lows(parser.parse_args(list(argv)), {"--problems": 1, "--steps": 1})


SCRIPT_CASES = [
    case("script/--problems 0", script_flags("--problems", "0"), UsageError,
         "--problems must be in [1, inf), got 0"),
    case("script/a list flag with 0", script_flags("--steps", "4", "0"), UsageError,
         "--steps must be in [1, inf), got 0"),
    case("script/not an integer", script_flags("--problems", "abc"), UsageError,
         "argument --problems: invalid int value: 'abc'"),
]

CASES = (LOSS_CASES + CHEM_CASES + TOKENIZER_CASES + SAMPLER_CASES + PLAN_CASES +
         GUIDANCE_CASES + BLOCK_CASES + FILE_CASES + TEMPLATE_CASES + SCRIPT_CASES)


@pytest.mark.parametrize("case", CASES)
def test_a_bad_argument_is_one_clear_error(case: Case):
  """The call raises `case.error` whose message holds every substring of `case.message`
  (the argument's name, the expected shape or range, and what was given)."""
  with pytest.raises(case.error) as error:
    case.call()
  missing = [part for part in case.message if part not in str(error.value)]
  assert not missing, f"{case.id}: {missing} not in {str(error.value)!r}"


def test_case_ids_are_unique():
  ids = [param.values[0].id for param in CASES]
  assert len(ids) == len(set(ids)), sorted(i for i in ids if ids.count(i) > 1)


# Under jax.jit: shapes, dtypes and options are still checked; values are data.
JIT_LOSSES = {
    "mdlm_loss": lambda x, key: losses.mdlm_loss(uniform, x, key, mask_id=MASK),
    "mdlm_discrete_loss": lambda x, key: losses.mdlm_discrete_loss(
        uniform, x, key, num_steps=4, mask_id=MASK, valid=jnp.ones(x.shape, bool)),
    "remdm_loss": lambda x, key: losses.remdm_loss(uniform, x, key, num_steps=4,
                                                   sigma_rule="rescale", eta=0.5,
                                                   mask_id=MASK),
    "classifier_loss": lambda x, key: losses.classifier_loss(classifier, x, LABELS, key,
                                                             mask_id=MASK, vocab_size=V),
    "ar_loss": lambda x, key: losses.ar_loss(causal, x),
    "nelbo": lambda x, key: losses.nelbo(uniform(x, None), x, x, jnp.ones(2), MASK),
    "autoregressive_nll": lambda x, key: losses.autoregressive_nll(causal(x), x),
}


@pytest.mark.parametrize("name", sorted(JIT_LOSSES))
def test_valid_inputs_give_the_same_loss_under_jit(name):
  """A valid call gives the same `[] float32` eagerly and under `jax.jit` (ids traced, so
  their values are not read); a wrong shape is still refused under the trace."""
  loss = JIT_LOSSES[name]
  eager, traced = loss(X, KEY), jax.jit(loss)(X, KEY)
  assert traced.dtype == jnp.float32 and traced.shape == ()
  np.testing.assert_allclose(float(traced), float(eager), rtol=1e-6)
  jax.jit(loss)(with_id((0, 0), V + 3), KEY)       # traced ids are data: not read, no error
  with pytest.raises(ValueError, match=r"x must have 2 dimensions \[B, L\], got shape \[3\]"):
    jax.jit(loss)(X[0], KEY)
  with pytest.raises(ArgumentTypeError, match="x must hold integer values"):
    jax.jit(loss)(X.astype(jnp.float32), KEY)


def test_traced_eta_and_options_under_jit():
  """eta as traced data is not range-checked (a sweep compiles once); num_steps and
  sigma_rule, static, are."""
  loss = jax.jit(lambda eta: losses.remdm_loss(uniform, X, KEY, num_steps=4, sigma_rule="cap",
                                               eta=eta, mask_id=MASK))
  assert np.isfinite(float(loss(0.1)))
  with pytest.raises(ValueError, match=r"num_steps must be in \[1, inf\), got 0"):
    jax.jit(lambda x: losses.mdlm_discrete_loss(uniform, x, KEY, num_steps=0, mask_id=MASK))(X)
