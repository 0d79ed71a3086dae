"""edgec's cache folder: measured host figures (edgec.hostperf) and recorded evaluations
(edgec.compare), things that are slow to measure and safe to forget."""
from __future__ import annotations

import os
from pathlib import Path


def cache_dir(*parts: str) -> Path:
    """$EDGEC_CACHE_DIR, else $XDG_CACHE_HOME/edgec, else ~/.cache/edgec (created), joined with parts."""
    base = os.environ.get("EDGEC_CACHE_DIR") or (
        Path(os.environ["XDG_CACHE_HOME"]) / "edgec" if os.environ.get("XDG_CACHE_HOME")
        else Path.home() / ".cache" / "edgec")
    path = Path(base).joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path
