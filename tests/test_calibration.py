"""Calibration data (text -> token windows) and the node-by-node calibration runner."""
import numpy as np
import pytest

from edgec.calibration import CalibConfig, read_text, run_calibration, token_windows
from edgec.errors import EdgecError
from edgec.ir import interpret
from helpers import two_linears
from tiny import tiny_tokenizer

TEXT = "The quick brown fox jumps over the lazy dog. " * 40


def test_read_text_file_folder_and_crlf(tmp_path):
    (tmp_path / "a.txt").write_bytes(b"one\r\ntwo\r\n")
    (tmp_path / "b.raw").write_text("three\n")
    (tmp_path / "skip.bin").write_bytes(b"\x00\x01")
    assert read_text(tmp_path / "a.txt") == "one\ntwo\n"
    assert read_text(tmp_path) == "one\ntwo\n\nthree\n"


def test_read_text_errors(tmp_path):
    with pytest.raises(EdgecError, match="does not exist"):
        read_text(tmp_path / "missing.txt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(EdgecError, match="has no"):
        read_text(tmp_path / "empty")
    with pytest.raises(EdgecError, match="hf:DATASET"):
        read_text("hf:only")


def test_token_windows_are_seeded_and_sized():
    tok = tiny_tokenizer()
    a = token_windows(TEXT, tok, samples=5, seqlen=32, seed=3)
    b = token_windows(TEXT, tok, samples=5, seqlen=32, seed=3)
    assert len(a) == 5 and all(len(w) == 32 for w in a)
    assert all((x == y).all() for x, y in zip(a, b))
    ids = tok(TEXT, add_special_tokens=False)["input_ids"]
    joined = " ".join(map(str, ids))
    assert " ".join(map(str, a[0])) in joined  # a real contiguous window of the corpus


def test_text_shorter_than_one_window():
    with pytest.raises(EdgecError, match="shorter than one window of 4096"):
        token_windows("tiny text", tiny_tokenizer(), samples=2, seqlen=4096)


def test_config_bounds():
    with pytest.raises(EdgecError, match="calib-samples"):
        CalibConfig(samples=0).check()
    with pytest.raises(EdgecError, match="calib-seqlen"):
        CalibConfig(seqlen=1).check()


def test_run_calibration_visits_in_order_and_sees_updated_weights():
    g = two_linears()
    windows = [np.array([1, 2, 3]), np.array([4, 5, 6, 7])]
    seen = []

    def visit(node, inputs):
        seen.append((node.inputs[1].name, [x.shape for x, _ in inputs]))
        if node.inputs[1].name == "w1":  # "compress" the first layer: zero it
            g.weights["w1"] = np.zeros((8, 8), np.float32)
        else:  # the second layer must see the zeroed first layer's outputs
            assert all(np.all(x == 0) for x, _ in inputs)

    n = run_calibration(g, windows, lambda node: node.op == "linear", visit)
    assert n == 2
    assert seen == [("w1", [(1, 3, 8), (1, 4, 8)]), ("w2", [(1, 3, 8), (1, 4, 8)])]


def test_run_calibration_inputs_equal_interpreter_values():
    g = two_linears()
    window = np.array([3, 1, 4, 1, 5])
    got = {}
    run_calibration(g, [window], lambda n: n.op == "relu", lambda n, ins: got.update(x=ins[0][0]))
    relu = next(n for n in g.nodes if n.op == "relu")
    g2 = two_linears()
    g2.outputs = [next(n for n in g2.nodes if n.op == "relu").inputs[0]]
    ref = interpret(g2, {"input_ids": window[None], "position_ids": np.arange(5)[None]})
    np.testing.assert_allclose(got["x"], next(iter(ref.values())))
    assert relu.inputs[0].shape == (1, "seq", 8)
