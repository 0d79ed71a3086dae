"""The benchmark helpers that decide what the tables say: the Pareto front, the quality column, the ONNX peer scorer."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import decode_report  # noqa: E402
from peer_scorers import OnnxDecoderScorer  # noqa: E402


def test_pareto_front_keeps_only_points_nothing_beats_on_both_axes():
    # (decode tok/s, perplexity)
    pts = [(200, 43.0), (180, 39.0), (170, 35.0), (110, 28.0), (120, 30.0), (100, 31.0), (175, 40.0)]
    front = decode_report.pareto_front(pts)
    assert front == [0, 1, 2, 4, 3]  # fastest first; (100, 31) and (175, 40) are beaten on both axes


def _row(system, ppl=None):
    r = {"system": system, "label": system, "size_bytes": 1e6, "weight_bytes_per_token": 1e6, "peak_rss_bytes": 1e6,
         "decode_tok_s": 100.0, "decode_runs": [90, 110], "decode_vs_llama_cpp": 1.0, "pct_of_limit": 50,
         "prefill_tok_s": 500, "prefill_vs_llama_cpp": 1.0, "same_tokens_as_ref": 3}
    if ppl is not None:
        r["perplexity"] = ppl
    return r


def test_table_has_a_perplexity_column_only_when_measured():
    with_q = decode_report.table([_row("a", 31.25), {**_row("b"), "perplexity": None}], "ref", 8)
    assert with_q[0].startswith("| system | perplexity |")
    assert "| a | 31.25 |" in with_q[2] and "| b | — |" in with_q[3]
    assert all(line.count("|") == with_q[0].count("|") for line in with_q)
    without = decode_report.table([_row("a")], "ref", 8)
    assert "perplexity" not in without[0] and without[0].count("|") == without[2].count("|")


def test_pareto_png_is_written(tmp_path):
    pytest.importorskip("matplotlib")
    rows = [{**_row("edgec-int4", 34.0), "decode_tok_s": 200.0}, {**_row("llama.cpp", 28.3), "decode_tok_s": 110.0}]
    out = decode_report.pareto_png(rows, tmp_path / "p.png", 16384)
    assert out and (tmp_path / "p.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _decoder_onnx(path: Path, vocab=11, dim=3):
    """A toy decoder with GenAI-style inputs: logits = table[ids] + sum(mask) + sum(past)."""
    table = np.arange(vocab * dim, dtype=np.float32).reshape(vocab, dim)
    nodes = [
        helper.make_node("Gather", ["table", "input_ids"], ["emb"]),
        helper.make_node("Cast", ["attention_mask"], ["maskf"], to=TensorProto.FLOAT),
        helper.make_node("ReduceSum", ["maskf"], ["msum"], keepdims=0),
        helper.make_node("ReduceSum", ["past_key_values.0.key"], ["psum"], keepdims=0),
        helper.make_node("Add", ["msum", "psum"], ["extra"]),
        helper.make_node("Add", ["emb", "extra"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes, "toy",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"]),
         helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "total"]),
         helper.make_tensor_value_info("past_key_values.0.key", TensorProto.FLOAT, ["batch", 2, "past", "kv_dim"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", "seq", dim])],
        [numpy_helper.from_array(table, "table")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return table


def test_onnx_decoder_scorer_feeds_a_whole_window_from_empty_pasts(tmp_path):
    table = _decoder_onnx(tmp_path / "model.onnx")
    with pytest.raises(RuntimeError, match="kv_dim"):  # a head dim it cannot know is an error, not a guess
        OnnxDecoderScorer(tmp_path / "model.onnx", tokenizer=None, threads=1, name="toy").logits([1, 2])
    s = OnnxDecoderScorer(tmp_path / "model.onnx", tokenizer=None, threads=1, name="toy", parameters=33,
                          dims={"kv_dim": 4})
    ids = [4, 1, 7, 7, 0]
    got = s.logits(ids)
    # empty past (sum 0), a mask of ones over the window (sum 5)
    np.testing.assert_array_equal(got, table[ids] + len(ids))
    assert got.dtype == np.float32 and s.size_bytes > table.nbytes
    assert s.weight_bytes == 0  # a table only gathered from is not read whole per token
