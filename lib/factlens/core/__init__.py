"""The core: the model registry, loading models, the View (the one door to a model), the partial forward, the cache."""
