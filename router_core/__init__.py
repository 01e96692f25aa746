"""Prefill Router core library: pure functions and classes, no Ray, no environment reads."""

__version__ = "0.1.0"
