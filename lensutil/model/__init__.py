"""The hooked models and their parts: components read the config, never a model's name; nothing here loads, places or analyses."""
