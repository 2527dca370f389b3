"""Experiments: paper presets, ``acpsl compare`` (grids of runs), and ``acpsl report``."""

__all__: list[str] = []
