"""Interleaved RoPE (GPT-J, Cohere) raised to rotate-half `rotary` with reordered head dims, and the
Falcon/Cohere/GPT-J variants the tiny architecture suite does not build, against transformers."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

from edgec.errors import UnsupportedModelError
from edgec.ir import Graph, interpret
from edgec.ir.ops import INT_MAX
from edgec.pipeline import compile_ir
from edgec.recipes import load_recipe
from helpers import IDS, logits, run_pass
from tiny import tiny_config, tiny_tokenizer

F32 = "float32"
RNG = np.random.default_rng(0)
SWAP = [0, 2, 1, 3]


def randn(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


def every_two(g: Graph, x):
    """flatten(stack([-x[..., 1::2], x[..., ::2]], -1), -2) as the frontend maps it."""
    odd = g.op("neg", g.op("slice", x, axis=3, start=1, end=INT_MAX, step=2))
    even = g.op("slice", x, axis=3, start=0, end=INT_MAX, step=2)
    pairs = g.op("concat", g.op("unsqueeze", odd, axis=4), g.op("unsqueeze", even, axis=4), axis=4)
    return g.op("reshape", pairs, shape=[d if isinstance(d, int) else -1 for d in x.shape])


def interleaved_graph(rot=8, seq_first=False, norm=False, k_interleaved=True) -> Graph:
    """h -> q/k/v linears -> 2 heads of 8 -> interleaved RoPE on the first `rot` dims of q and k -> attention.
    seq_first: RoPE on [B, S, H, D] before the transpose (GPT-J); norm: a per-dim scale between the linear
    and the heads' RoPE, so the reordering cannot go into the linear's rows."""
    g = Graph()
    h = g.add_input("h", F32, (1, "seq", 16))
    head_axis = 2 if seq_first else 1
    tables = []
    for name in ("cos", "sin"):
        t = g.add_input(name, F32, (1, "seq", rot // 2))
        t = g.op("reshape", g.op("expand", g.op("unsqueeze", t, axis=3), shape=[1, -1, rot // 2, 2]),
                 shape=[1, -1, rot])  # repeat_interleave(t, 2, -1)
        tables.append(g.op("unsqueeze", t, axis=head_axis))
    cos, sin = tables

    def heads(name):
        x = g.op("linear", h, g.add_weight(name, randn(16, 16)), g.add_weight(name + ".bias", randn(16)))
        x = g.op("reshape", x, shape=[1, -1, 2, 8])
        if norm:
            x = g.op("mul", x, g.add_weight(name + ".norm", randn(8)))
        return x if seq_first else g.op("permute", x, perm=SWAP)

    def rope(x):
        xr = x if rot == 8 else g.op("slice", x, axis=3, start=0, end=rot)
        out = g.op("add", g.op("mul", xr, cos), g.op("mul", every_two(g, xr), sin))
        if rot < 8:
            out = g.op("concat", out, g.op("slice", x, axis=3, start=rot, end=INT_MAX), axis=3)
        return g.op("permute", out, perm=SWAP) if seq_first else out

    def plain(x):
        return g.op("permute", x, perm=SWAP) if seq_first else x

    q = rope(heads("q"))
    k = rope(heads("k")) if k_interleaved else plain(heads("k"))
    g.outputs = [g.op("attention", q, k, plain(heads("v")), scale=8 ** -0.5)]
    return g


def feeds(g: Graph, seq=5) -> dict:
    return {v.name: randn(*[seq if not isinstance(d, int) else d for d in v.shape]) for v in g.inputs}


@pytest.mark.parametrize("rot,seq_first,norm", [(8, False, False), (4, False, False), (4, True, False),
                                                (8, True, False), (4, False, True), (8, True, True)], ids=str)
def test_interleaved_rotary_becomes_rotate_half(rot, seq_first, norm):
    g = interleaved_graph(rot, seq_first, norm)
    before = copy.deepcopy(g)
    assert run_pass(g, "raise_interleaved_rotary").counts == {"rotary": 2, "folded": 0 if norm else 2}
    run_pass(g, "dce")
    ops = g.op_counts()
    assert ops["rotary"] == 2 and "add" not in ops and "neg" not in ops
    assert not any(n.op == "slice" and n.attrs["step"] != 1 for n in g.nodes)
    assert all(n.inputs[0].shape[2] == "seq" for n in g.nodes if n.op == "rotary")  # [B, H, S, D]
    # the rotary moved behind GPT-J's transpose: the transpose back and that transpose cancel
    assert not any(n.op == "permute" and n.attrs["perm"] == SWAP and n.inputs[0].producer is not None
                   and n.inputs[0].producer.op == "permute" and n.inputs[0].producer.attrs["perm"] == SWAP
                   for n in g.nodes)
    f = feeds(g)
    np.testing.assert_allclose(interpret(g, f)[g.outputs[0].name], interpret(before, f)[before.outputs[0].name],
                               rtol=1e-5, atol=1e-5)


def test_weights_take_the_reordering_only_when_nothing_else_reads_them():
    g = interleaved_graph(rot=4)
    q = np.asarray(g.weights["q"]).copy()
    run_pass(g, "raise_interleaved_rotary")
    order = np.array([0, 2, 1, 3, 4, 5, 6, 7])  # evens, odds of the 4 rotary dims, then the rest
    np.testing.assert_array_equal(np.asarray(g.weights["q"]), q.reshape(2, 8, 16)[:, order].reshape(16, 16))


def test_only_q_interleaved_is_left_alone():
    """Reordering q alone would change q.k: nothing is raised unless both are interleaved."""
    g = interleaved_graph(k_interleaved=False)
    ops = g.op_counts()
    assert run_pass(g, "raise_interleaved_rotary").counts == {"rotary": 0, "folded": 0}
    assert g.op_counts() == ops


# ---------------------------------------------------------------- model variants
VARIANTS = {
    "cohere-qk-norm": ("cohere", dict(use_qk_norm=True)),        # a norm between q_proj and the RoPE
    "gptj-full-rotary": ("gptj", dict(rotary_dim=16)),           # rotary_dim == head_dim
    "falcon-new-arch": ("falcon", dict(new_decoder_architecture=True, num_kv_heads=2)),  # falcon-40b: GQA groups
    "falcon-multi-head": ("falcon", dict(multi_query=False)),    # q/k/v interleaved per head (unflatten/unbind)
    "falcon-serial": ("falcon", dict(parallel_attn=False, bias=True)),
}


def save_variant(arch, changes, path):
    cfg = tiny_config(arch)
    for k, v in changes.items():
        setattr(cfg, k, v)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(cfg).eval().save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    return path


@pytest.mark.parametrize("name", VARIANTS)
def test_variant_matches_transformers(name, tmp_path):
    arch, changes = VARIANTS[name]
    path = save_variant(arch, changes, tmp_path / name)
    imported, _ = compile_ir(str(path), load_recipe("fp32"))
    ops = imported.graph.op_counts()
    assert ops.get("rotary_cached", 0) + ops.get("rotary", 0) == 4
    eager = AutoModelForCausalLM.from_pretrained(path, attn_implementation="eager", dtype=torch.float32).eval()
    with torch.no_grad():
        ref = eager(torch.tensor([IDS])).logits[0].numpy()
    assert np.abs(logits(imported.graph) - ref).max() <= 1e-4


def test_falcon_with_alibi_is_refused(tmp_path):
    path = save_variant("falcon", dict(alibi=True), tmp_path / "alibi")
    with pytest.raises(UnsupportedModelError, match=r"'falcon' with ALiBi position bias \(config.alibi\) is not"):
        compile_ir(str(path), load_recipe("fp32"))
