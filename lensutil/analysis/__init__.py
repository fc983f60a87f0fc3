"""Tools built on a loaded model: patching from a cache, collecting activations over many inputs, and the opt-in allocator tuning for loops of large caches."""
