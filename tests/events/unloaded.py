"""A module a test imports lazily (importlib.util.LazyLoader)."""

loaded = True
