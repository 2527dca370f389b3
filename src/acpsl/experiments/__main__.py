"""``python -m acpsl.experiments {presets,compare,report}``: the experiment commands alone."""

import sys

from acpsl.experiments.cli import main

sys.exit(main())
