"""The core: loading models (the registry), the View, the partial forward and the cache."""
