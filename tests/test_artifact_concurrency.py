"""Loading while another process rebuilds the same path: every load is one whole build, never a mix."""
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

import edgec
from edgec.artifact import pack
from tiny import save_tiny

IDS = [5, 9, 12, 40, 3]
SECONDS = 12


@pytest.fixture(scope="module")
def two_builds(tmp_path_factory):
    """Two artifacts of the same architecture with different weights, packed, and their logits."""
    d = tmp_path_factory.mktemp("concurrent")
    out = []
    for seed in (0, 1):
        model = save_tiny("llama", d / f"hf{seed}", seed=seed)
        art = edgec.build(model, d / f"art{seed}")
        out.append((pack(art, d / f"art{seed}.edgec"), edgec.load(art).logits(IDS)))
    return out


def test_load_while_rebuilding(two_builds, tmp_path):
    (pack_a, ref_a), (pack_b, ref_b) = two_builds
    assert not np.allclose(ref_a, ref_b, atol=1e-3)  # the two builds are told apart by their logits
    target = tmp_path / "live"
    edgec.artifact.unpack(pack_a, target)
    rebuilder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import time
        from edgec.artifact import unpack
        end, i = time.time() + {SECONDS}, 0
        while time.time() < end:
            unpack({str(pack_b)!r} if i % 2 == 0 else {str(pack_a)!r}, {str(target)!r})
            i += 1
        print(i)
    """)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    loads, seen, mixed, errors = 0, set(), 0, []
    end = time.time() + SECONDS
    while time.time() < end:
        try:
            model = edgec.load(target)
            logits = model.logits(IDS)
            tok = model.tokenizer  # read after the model: still the verified build's own files
            assert tok.decode([IDS[0]]) is not None
        except Exception as e:  # noqa: BLE001 - any error is a failure of this property
            errors.append(f"{type(e).__name__}: {e}")
            continue
        loads += 1
        if np.allclose(logits, ref_a, atol=1e-5):
            seen.add("a")
        elif np.allclose(logits, ref_b, atol=1e-5):
            seen.add("b")
        else:
            mixed += 1
    out, err = rebuilder.communicate(timeout=120)
    assert rebuilder.returncode == 0, err
    rebuilds = int(out.strip())
    assert rebuilds >= 4 and loads >= 10, (rebuilds, loads)
    assert errors == [] and mixed == 0, (errors[:3], mixed)
    assert seen == {"a", "b"}, seen  # loads really did overlap the swaps
    assert sorted(p.name for p in tmp_path.iterdir()) == ["live"]  # no temp folders left behind


def test_weights_from_memory_when_the_folder_was_swapped(two_builds, tmp_path, monkeypatch):
    """If the weight file on disk is no longer the verified inode, the verified one is used."""
    from edgec.artifact import VerifiedFiles

    (pack_a, ref_a), _ = two_builds
    target = edgec.artifact.unpack(pack_a, tmp_path / "a")
    monkeypatch.setattr(VerifiedFiles, "is_current", lambda self, rel: False)
    np.testing.assert_allclose(edgec.load(target).logits(IDS), ref_a, atol=1e-5)
