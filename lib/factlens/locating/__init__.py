"""Locating facts: causal tracing (Meng et al. 2022) and average indirect effects."""
