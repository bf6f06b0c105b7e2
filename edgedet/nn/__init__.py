"""Layers shared by the detector families."""
