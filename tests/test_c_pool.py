"""targets/c/runtime/ec_rt.c's thread pools from their first region on (tests/c/pool_main.c).

A region begun with ec_parallel_start must be run by the workers alone: the MoE runtime waits for each cold
expert's reads without claiming any. Workers used to take the pool's state when they first ran as already
seen, so a region published before they were scheduled (a busy machine) was never run and edgec-run hung.
"""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RUNTIME = ROOT / "targets" / "c" / "runtime"


@pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc")
@pytest.mark.parametrize("flags", [["-O1"], ["-O1", "-g", "-fsanitize=thread"]], ids=["plain", "tsan"])
def test_regions_begun_before_the_workers_run_are_run_by_them(flags, tmp_path):
    exe = tmp_path / "pool"
    subprocess.run(["gcc", *flags, "-pthread", f"-I{RUNTIME}", str(Path(__file__).parent / "c" / "pool_main.c"),
                    str(RUNTIME / "ec_rt.c"), str(RUNTIME / "linear.c"), "-o", str(exe), "-lm"], check=True)
    proc = subprocess.run([str(exe), "100"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "WARNING: ThreadSanitizer" not in proc.stderr, proc.stderr
