"""Torch-free everyday commands: predict, val, track, benchmark (each also a Python function)."""
