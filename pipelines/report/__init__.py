"""The run report: ``noisystudent report RUN_DIR`` writes ``RUN_DIR/report/index.html`` and its PNGs.

:func:`build_report` is the entry point (:mod:`.build`); :mod:`.rundata` reads the run folder (tolerating
missing pieces), :mod:`.tables` and :mod:`.figures` decide what the page shows, :mod:`.plots` draws the
figures with matplotlib's Agg canvas, :mod:`.html` lays out one self-contained page.
"""

from __future__ import annotations

from .build import build_report, fmt, fmt_figure
from .rundata import RunData, collect

__all__ = ["RunData", "build_report", "collect", "fmt", "fmt_figure"]
