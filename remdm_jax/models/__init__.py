"""Backbones: the MDLM diffusion transformer (DiT) in Flax NNX."""

from remdm_jax.models.classifier import NoisyClassifier, as_classifier
from remdm_jax.models.dit import DiT, DiTConfig, as_denoiser, as_evaluator, denoiser_and_params

__all__ = ["DiT", "DiTConfig", "NoisyClassifier", "as_classifier", "as_denoiser", "as_evaluator",
           "denoiser_and_params"]
