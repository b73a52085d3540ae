"""``python -m tune_losses.report``: run :func:`tune_losses.report.main`."""

from __future__ import annotations

import sys

from tune_losses.report.cli import main

if __name__ == "__main__":
    sys.exit(main())
