"""Backbones in Flax NNX: the MDLM diffusion transformer (DiT), its noisy classifier, and the
LLaDA bidirectional transformer read from its released checkpoint layout."""

from remdm_jax.models.classifier import NoisyClassifier, as_classifier
from remdm_jax.models.denoisers import as_denoiser
from remdm_jax.models.dit import DiT, DiTConfig, as_evaluator, denoiser_and_params
from remdm_jax.models.llada import LLaDA, LLaDAConfig

__all__ = ["DiT", "DiTConfig", "LLaDA", "LLaDAConfig", "NoisyClassifier", "as_classifier",
           "as_denoiser", "as_evaluator", "denoiser_and_params"]
