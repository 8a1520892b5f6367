"""Example meshnode plugin (see plugin.py)."""
