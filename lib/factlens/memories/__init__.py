"""Feed-forward layers as key-value memories (Geva et al. 2021): keys, patterns, values, aggregation."""
