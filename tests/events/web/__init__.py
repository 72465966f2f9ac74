"""A package of the project's own, using the signals of ``tests.events``."""
