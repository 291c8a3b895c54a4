"""Particle methods for the sampler's `particles=` argument: best-of-N, sequential Monte Carlo
and particle Gibbs, carried inside the compiled scan. A name-only room: the methods live in
the sampling room (`remdm_jax.sampling.particles`, the scan `remdm_jax.sampling.particle_scan`),
which imports nothing outside it."""

from remdm_jax.sampling.particles import (BestOfN, ParticleGibbs, ParticleResult, Particles,
                                          ParticlesConfig, Smc, effective_size, resample)

__all__ = ["BestOfN", "ParticleGibbs", "ParticleResult", "Particles", "ParticlesConfig", "Smc",
           "effective_size", "resample"]
