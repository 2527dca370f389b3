"""Experiments: paper presets, ``acpsl compare`` (grids of runs), and ``acpsl report``.

Importing this package registers the ``dropgroup`` scheme (ACP-SL Fig. 2's channel-group
ablation) in the scheme registry.
"""

from acpsl.experiments import dropgroup as _dropgroup  # noqa: F401  (registers "dropgroup")

__all__: list[str] = []
