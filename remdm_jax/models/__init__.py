"""Backbones: the MDLM diffusion transformer (DiT) in Flax NNX."""

from remdm_jax.models.dit import DiT, DiTConfig

__all__ = ["DiT", "DiTConfig"]
