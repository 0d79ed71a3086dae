"""edgec/memory.py: which ranges move to huge pages, and that nothing else is touched."""
from __future__ import annotations

import ctypes
import mmap
import sys

import numpy as np
import pytest

from edgec.memory import HUGE_PAGE, MIN_RANGE, PAGE, HugePages, anonymous_ranges, new_ranges

MB = 1 << 20

MAPS = """\
55d0c0000000-55d0c0400000 rw-p 00000000 00:00 0                          [heap]
7f0000000000-7f0000800000 rw-p 00000000 00:00 0 
7f0000800000-7f0000c00000 r--p 00000000 08:01 1234                       /usr/lib/libfoo.so
7f0001000000-7f0001800000 rw-p 00000000 08:01 99                         /tmp/model.onnx.data
7f0002000000-7f0002800000 rw-s 00000000 00:01 7                          /dev/zero (deleted)
7f0003000000-7f0003800000 r--p 00000000 00:00 0 
7ffc00000000-7ffc00800000 rw-p 00000000 00:00 0                          [stack]
"""


def test_anonymous_ranges_keeps_private_writable_anonymous_memory_only():
    assert anonymous_ranges(MAPS) == [(0x55d0c0000000, 0x55d0c0400000), (0x7f0000000000, 0x7f0000800000)]


def test_new_ranges_subtracts_old_memory_and_cuts_to_whole_huge_pages():
    base = 0x7f0000000000
    old = [(base, base + 8 * MB)]
    # a mapping that grew from 8 to 20 MB, plus a fresh unaligned one and a too-small one
    grown = (base, base + 20 * MB)
    fresh = (base + 64 * MB + PAGE, base + 80 * MB - PAGE)
    tiny = (base + 128 * MB, base + 128 * MB + MIN_RANGE - HUGE_PAGE)
    got = new_ranges(old, [grown, fresh, tiny])
    assert got == [(base + 8 * MB, base + 20 * MB), (base + 64 * MB + HUGE_PAGE, base + 78 * MB)]
    assert all(a % HUGE_PAGE == 0 and b % HUGE_PAGE == 0 and b - a >= MIN_RANGE for a, b in got)
    # memory that was there before is never returned, even when the new mapping straddles it
    inner = [(base + 4 * MB, base + 6 * MB)]
    assert new_ranges(inner, [(base, base + 16 * MB)]) == [(base, base + 4 * MB), (base + 6 * MB, base + 16 * MB)]
    assert new_ranges(old, old) == []


def _address(m: mmap.mmap) -> int:
    return ctypes.addressof(ctypes.c_char.from_buffer(m))


def _resident_pages(addr: int, size: int) -> int:
    libc = ctypes.CDLL(None)
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p]
    vec = ctypes.create_string_buffer(size // PAGE)
    assert libc.mincore(addr, size, vec) == 0
    return sum(c & 1 for c in vec.raw)


def _anon_huge_kib(addr: int) -> int:
    """AnonHugePages of the mapping that holds addr (/proc/self/smaps)."""
    inside = False
    for line in open("/proc/self/smaps"):
        head = line.split()[0]
        if "-" in head and ":" not in head:
            lo, hi = (int(x, 16) for x in head.split("-"))
            inside = lo <= addr < hi
        elif inside and line.startswith("AnonHugePages:"):
            return int(line.split()[1])
    return 0


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc/self/maps and madvise are Linux's")
def test_huge_pages_moves_new_resident_memory_only():
    flags = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS
    before = mmap.mmap(-1, 16 * MB, flags=flags)
    before.write(b"b" * (16 * MB))
    with HugePages() as hp:
        full = mmap.mmap(-1, 16 * MB, flags=flags)
        full.write(b"f" * (16 * MB))
        sparse = mmap.mmap(-1, 16 * MB, flags=flags)
        sparse[0] = 1
    old = (_address(before), _address(before) + 16 * MB)
    assert hp.ranges, "the new mappings were not found"
    assert not any(a < old[1] and old[0] < b for a, b in hp.ranges), "memory from before the block was touched"
    lo = _address(full)
    assert any(a <= -(-lo // HUGE_PAGE) * HUGE_PAGE and (lo + 16 * MB) // HUGE_PAGE * HUGE_PAGE <= b
               for a, b in hp.ranges), "the new, fully written mapping was not a candidate"
    # only fully resident huge pages are collapsed: the sparse mapping keeps its one page
    assert _resident_pages(_address(sparse), 16 * MB) == 1
    # (other memory the process gained meanwhile, e.g. a grown heap, may be among the ranges too)
    if _anon_huge_kib(lo + 8 * MB) >= 2048:
        assert hp.collapsed_bytes >= 2 * MB
        assert bytes(full[:4]) == b"ffff" and full[16 * MB - 1] == ord("f")
    else:  # a kernel without MADV_COLLAPSE (before 6.1) or without free huge pages says why
        assert hp.errors and hp.failed_bytes > 0
    before.close(), full.close(), sparse.close()


def test_huge_pages_disabled_does_nothing():
    with HugePages(enabled=False) as hp:
        a = np.ones(8 * MB // 4, np.float32)
    assert hp.ranges == [] and hp.collapsed_bytes == 0 and a.sum() == a.size


def test_onnx_executor_huge_pages_option(tiny_artifact):
    """On by default for the CPU provider, off with the [onnx] huge_pages option; the outputs do not change."""
    from edgec.targets.onnx import OnnxExecutor

    on = OnnxExecutor(tiny_artifact / "model")
    off = OnnxExecutor(tiny_artifact / "model", options={"huge_pages": False})
    assert on.huge_pages.enabled == sys.platform.startswith("linux")
    assert not off.huge_pages.enabled and off.huge_pages.ranges == []
    feeds = {"input_ids": np.array([[1, 2, 3]], np.int64), "position_ids": np.arange(3)[None]}
    for i in on.session.get_inputs():
        if i.name.startswith("past_"):
            feeds[i.name] = np.zeros([0 if isinstance(d, str) else d for d in i.shape], np.float32)
    np.testing.assert_array_equal(on.run(feeds)["logits"], off.run(feeds)["logits"])
