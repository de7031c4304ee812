"""mirl_jax: sparse all-in-one image restoration (MIR-L) in JAX."""

__version__ = "0.1.0"
