"""GroupQueryAttention lowering and the in-place KV cache of the generation loop.

- op level: cached `attention` lowered to com.microsoft.GroupQueryAttention equals
  the interpreter (plain run with an exact past, and in a shared buffer through
  IOBinding), for GQA/MQA/MHA head ratios, sliding windows and soft-capping;
  what GQA cannot express (head_dim of V != of K, no position_ids) falls back;
- models: tiny Llama (kv heads 2 and 1), Mistral (window) and Gemma 2 (window +
  softcap) artifacts: logits and step-by-step decode equal the interpreter,
  greedy generation equals transformers; the int8 KV cache falls back;
- the decode loop binds one cache per generation: buffers keep their identity
  and address over N steps and a step allocates nothing that grows;
- device session options, the context cap, and incremental detokenizing.
"""
from types import SimpleNamespace

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import transformers
from transformers import AutoModelForCausalLM

import edgec
from edgec.backends import get_backend
from edgec.devices import get_device, list_devices
from edgec.errors import EdgecError
from edgec.ir import Graph, interpret
from edgec.passes import get_pass
from edgec.pipeline import compile_ir, write_artifact
from edgec.recipes import load_recipe
from edgec.executor import ForwardSequence
from edgec.runtime import Detokenizer
from edgec.targets.onnx import OnnxExecutor, compile_graph, prelower
from edgec.backends import get_backend
from edgec.targets.onnx.runtime import OnnxSequence, session_options
from tiny import save_tiny, tiny_config, tiny_tokenizer

TOL = 1e-4
IDS = [5, 17, 33, 8, 41, 2, 60, 12, 9, 27, 70, 3, 44, 19, 23, 6]
rng = np.random.default_rng(0)


def rand(*shape, dtype="float32"):
    return rng.uniform(-2, 2, shape).astype(dtype)


def gqa_nodes(path) -> int:
    model = onnx.load(str(path / "model.onnx"), load_external_data=False)
    return sum(n.op_type == "GroupQueryAttention" for n in model.graph.node)


# ----------------------------------------------------------------------------- op level
def attention_graph(heads, kv, d=8, dv=8, window=0, softcap=0.0, dtype="float32", positions=True):
    g = Graph()
    q = g.add_input("q", dtype, (1, heads, "seq", d))
    k = g.add_input("k", dtype, (1, kv, "seq", d))
    v = g.add_input("v", dtype, (1, kv, "seq", dv))
    pk = g.add_input("past_key.0", dtype, (1, kv, "past", d))
    pv = g.add_input("past_value.0", dtype, (1, kv, "past", dv))
    if positions:
        g.add_input("position_ids", "int64", (1, "seq"))
    node = g.add_node("attention", [q, k, v, pk, pv], {"scale": d ** -0.5, "window": window, "softcap": softcap})
    node.outputs[1].name, node.outputs[2].name = "present_key.0", "present_value.0"
    g.outputs = list(node.outputs)
    return g


OP_CASES = {
    "gqa": dict(heads=4, kv=2),
    "mqa": dict(heads=4, kv=1),
    "mha": dict(heads=2, kv=2),
    "window": dict(heads=4, kv=2, window=3),
    "softcap": dict(heads=2, kv=1, softcap=2.0),
    "window_softcap": dict(heads=4, kv=2, window=4, softcap=3.0),
    "fp16": dict(heads=4, kv=2, dtype="float16"),
}


@pytest.mark.parametrize("name", sorted(OP_CASES))
def test_gqa_op_matches_interpreter(tmp_path, name):
    kw = OP_CASES[name]
    g = attention_graph(**kw)
    heads, kv, dtype = kw["heads"], kw["kv"], kw.get("dtype", "float32")
    assert compile_graph(prelower(g), tmp_path)["kv_cache"] == "shared_buffer"
    assert gqa_nodes(tmp_path) == 1
    ex = OnnxExecutor(tmp_path, threads=1)
    assert ex.shared_kv
    tol = 2e-3 if dtype == "float16" else 1e-5
    # plain run, past of exactly P rows: present has P+S rows as in the IR
    for p, s in ((0, 5), (6, 1), (4, 3)):
        f = {"q": rand(1, heads, s, 8, dtype=dtype), "k": rand(1, kv, s, 8, dtype=dtype),
             "v": rand(1, kv, s, 8, dtype=dtype), "past_key.0": rand(1, kv, p, 8, dtype=dtype),
             "past_value.0": rand(1, kv, p, 8, dtype=dtype), "position_ids": np.arange(p, p + s)[None]}
        want, got = interpret(g, f), ex.run(f)
        for out in g.outputs:
            assert got[out.name].shape == want[out.name].shape
            np.testing.assert_allclose(got[out.name], want[out.name], rtol=tol, atol=tol)
    # shared buffer: one [1, kv, 16, 8] buffer per K/V bound as past and present, chunks 5, 1, 3, 1
    buf = {n: np.full((1, kv, 16, 8), 9.0, dtype) for n in ("past_key.0", "past_value.0")}  # junk rows
    ovs = {n: ort.OrtValue.ortvalue_from_numpy(b) for n, b in buf.items()}
    past = {n: np.zeros((1, kv, 0, 8), dtype) for n in buf}
    pos = 0
    for s in (5, 1, 3, 1):
        f = {"q": rand(1, heads, s, 8, dtype=dtype), "k": rand(1, kv, s, 8, dtype=dtype),
             "v": rand(1, kv, s, 8, dtype=dtype), "position_ids": np.arange(pos, pos + s)[None]}
        want = interpret(g, {**f, **past})
        b = ex.session.io_binding()
        for n_, a in f.items():
            b.bind_cpu_input(n_, a)
        for n_, ov in ovs.items():
            b.bind_ortvalue_input(n_, ov)
            b.bind_ortvalue_output(n_.replace("past_", "present_"), ov)
        b.bind_output(g.outputs[0].name)
        ex.session.run_with_iobinding(b)
        got = b.get_outputs()[-1].numpy()
        np.testing.assert_allclose(got, want[g.outputs[0].name], rtol=tol, atol=tol)
        past = {n: want[n.replace("past_", "present_")] for n in past}
        pos += s
        for n_ in buf:  # the rows so far are in the buffer, in place
            np.testing.assert_array_equal(buf[n_][:, :, :pos], past[n_])


@pytest.mark.parametrize("kw", [dict(heads=4, kv=2, dv=4), dict(heads=4, kv=2, positions=False)],
                         ids=["v_head_dim", "no_position_ids"])
def test_gqa_falls_back_when_not_expressible(tmp_path, kw):
    g = attention_graph(**kw)
    assert compile_graph(prelower(g), tmp_path)["kv_cache"] == "concat"
    assert gqa_nodes(tmp_path) == 0
    assert not OnnxExecutor(tmp_path, threads=1).shared_kv


# ----------------------------------------------------------------------------- tiny models
def _save(arch, path, **overrides):
    if not overrides:
        return save_tiny(arch, path)
    torch.manual_seed(0)
    cfg = tiny_config(arch)
    for k, v in overrides.items():
        setattr(cfg, k, v)
    transformers.AutoModelForCausalLM.from_config(cfg).eval().save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    return path


MODELS = {"llama": ("llama", {}), "llama_mqa": ("llama", {"num_key_value_heads": 1}),
          "mistral": ("mistral", {}), "gemma2": ("gemma2", {})}


@pytest.fixture(scope="module", params=sorted(MODELS))
def built(request, tmp_path_factory):
    arch, overrides = MODELS[request.param]
    d = tmp_path_factory.mktemp(request.param)
    _save(arch, d / "hf", **overrides)
    recipe = load_recipe("fp32")
    imported, pm = compile_ir(str(d / "hf"), recipe)
    art = write_artifact(imported, pm, d / "artifact", device=get_device("host"),
                         backend=get_backend("onnx"), recipe=recipe)
    eager = AutoModelForCausalLM.from_pretrained(d / "hf", attn_implementation="eager",
                                                 dtype=torch.float32).eval()
    return SimpleNamespace(name=request.param, graph=imported.graph, artifact=art, eager=eager)


def reference_logits(graph, ids):
    past = {v.name: np.zeros([0 if isinstance(x, str) else x for x in v.shape], v.dtype)
            for v in graph.inputs if v.name.startswith("past_")}
    rows = {v.name: np.array([len(ids)]) for v in graph.inputs if v.name == "logits_rows"}  # ONNX prelower's
    return interpret(graph, {"input_ids": np.array([ids]), "position_ids": np.arange(len(ids))[None],
                             **past, **rows})["logits"][0]


def test_model_uses_gqa_and_matches_interpreter(built):
    model = edgec.load(built.artifact)
    assert model.manifest["backend"]["kv_cache"] == "shared_buffer"
    assert gqa_nodes(built.artifact / "model") == built.graph.facts.kv_layers == 2
    nodes = onnx.load(str(built.artifact / "model" / "model.onnx"), load_external_data=False).graph.node
    gqa_out = {n.output[0] for n in nodes if n.op_type == "GroupQueryAttention"}
    assert not [n for n in nodes if n.op_type == "Reshape" and n.input[0] in gqa_out]  # heads merged by GQA itself
    ref = reference_logits(built.graph, IDS)
    np.testing.assert_allclose(model.logits(IDS), ref, atol=TOL, rtol=0)
    # the generation path: in-place cache, a prompt, a chunk of 3, then single tokens
    seq = model.sequence(len(IDS))
    assert isinstance(seq.inner, OnnxSequence)
    steps = [seq.run(IDS[:4])[-1].copy(), *seq.run(IDS[4:7])[:].copy()]
    for t in IDS[7:]:
        steps.append(seq.run([t])[-1].copy())
    np.testing.assert_allclose(np.array(steps), ref[3:], atol=TOL, rtol=0)
    with pytest.raises(EdgecError, match="do not fit"):
        seq.run([1])


def test_prefill_can_skip_the_logits_of_all_but_the_last_row(built):
    """The `logits_rows` input: a prompt's prefill runs the head on its last row only."""
    model = edgec.load(built.artifact)
    inputs = [i.name for i in onnx.load(built.artifact / "model" / "model.onnx", load_external_data=False).graph.input]
    assert inputs[-1] == "logits_rows"
    ref = reference_logits(built.graph, IDS)
    seq = model.sequence(len(IDS))
    last = seq.run(IDS[:6], last_only=True)
    assert last.shape == (1, ref.shape[1])
    np.testing.assert_allclose(last[0], ref[5], atol=TOL, rtol=0)
    np.testing.assert_allclose(seq.run(IDS[6:9])[:], ref[6:9], atol=TOL, rtol=0)  # all rows by default
    np.testing.assert_allclose(seq.run(IDS[9:12], last_only=True)[0], ref[11], atol=TOL, rtol=0)
    assert seq.length == 12


def test_greedy_generation_matches_transformers(built):
    model = edgec.load(built.artifact)
    prompt = IDS[:5]
    ours = model.generate(prompt, max_new_tokens=20, stop_at_eos=False)
    hf = built.eager
    hf.generation_config.eos_token_id = None
    with torch.no_grad():
        theirs = hf.generate(torch.tensor([prompt]), max_new_tokens=20, do_sample=False,
                             pad_token_id=0)[0, len(prompt):].tolist()
    assert ours == theirs


def test_decode_never_copies_or_reallocates_the_cache(built):
    model = edgec.load(built.artifact)
    seq = model.sequence(64).inner
    seq.run(IDS[:5])
    addresses = {n: (id(b), b.ctypes.data, seq._kv[n].data_ptr()) for n, b in seq.buffers.items()}
    assert all(a[1] == a[2] for a in addresses.values())  # the OrtValue is the numpy buffer
    first = seq.run([3])
    logits_address = first.ctypes.data
    tok = int(first.argmax())
    for _ in range(40):
        logits = seq.run([tok])
        assert logits.ctypes.data == logits_address  # logits land in one reused array
        tok = int(logits.argmax())
    assert seq.length == 46
    assert {n: (id(b), b.ctypes.data, seq._kv[n].data_ptr()) for n, b in seq.buffers.items()} == addresses
    # the buffers hold exactly the cache a plain run computes (written in place by GQA)
    prefix = IDS[:5] + [3]
    _, cache = model.forward(prefix, 0, model.empty_cache())
    for name, rows in cache.items():
        np.testing.assert_allclose(seq.buffers[name][:, :, :len(prefix)], rows, atol=TOL, rtol=0)


def test_decode_steps_keep_no_python_allocations(built):
    """Nothing allocated by edgec's side of a step outlives it (onnxruntime's own caches aside)."""
    import tracemalloc

    model = edgec.load(built.artifact)
    seq = model.sequence(100)
    seq.run(IDS[:5])
    seq.run([3])
    ours = [tracemalloc.Filter(True, "*/edgec/runtime.py"), tracemalloc.Filter(True, "*/onnx/runtime.py")]
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot().filter_traces(ours)
        for _ in range(60):
            seq.run([7])
        after = tracemalloc.take_snapshot().filter_traces(ours)
    finally:
        tracemalloc.stop()
    grown = sum(d.size_diff for d in after.compare_to(before, "lineno"))
    assert grown <= 0, after.compare_to(before, "lineno")[:3]


def test_stream_uses_one_sequence_sized_for_the_request(built, monkeypatch):
    model = edgec.load(built.artifact)
    made = []
    original = model._sequence
    monkeypatch.setattr(model, "_sequence", lambda cap=None: made.append(cap) or original(cap))
    assert len(model.generate(IDS[:5], max_new_tokens=7, stop_at_eos=False)) == 7
    assert made == [5 + 7 - 1]


# ----------------------------------------------------------------------------- fallback
def test_int8_kv_cache_falls_back_to_concat(tiny_llama, tmp_path):
    recipe = load_recipe("int8-kv")
    imported, pm = compile_ir(str(tiny_llama), recipe)
    art = write_artifact(imported, pm, tmp_path / "kv8", device=get_device("host"),
                         backend=get_backend("onnx"), recipe=recipe)
    model = edgec.load(art)
    assert model.manifest["backend"]["kv_cache"] == "concat" and gqa_nodes(art / "model") == 0
    seq = model.sequence(32)
    assert isinstance(seq.inner, ForwardSequence)
    tokens = model.generate(IDS[:5], max_new_tokens=8, stop_at_eos=False)
    full = model.logits(IDS[:5] + tokens)
    assert (full[4:-1].argmax(-1) == np.array(tokens)).mean() >= 0.85


# ----------------------------------------------------------------------------- options
@pytest.mark.parametrize("name", list_devices())
def test_device_onnx_options_are_valid(name):
    table = get_device(name).options_for("onnx")
    assert table and get_backend("onnx").check_options(table, name) == table
    session_options(table)


def test_session_options_and_threads_override():
    opts = session_options({"intra_op_threads": 3, "allow_spinning": False, "cpu_mem_arena": False,
                            "graph_optimization": "basic"}, threads=2)
    assert opts.intra_op_num_threads == 2 and not opts.enable_cpu_mem_arena
    assert opts.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert session_options({"intra_op_threads": 3}).intra_op_num_threads == 3
    with pytest.raises(EdgecError, match=r"no option\(s\) \['threads'\]; valid: accuracy_level, allow_spinning"):
        session_options({"threads": 2})
    with pytest.raises(EdgecError, match="graph_optimization"):
        session_options({"graph_optimization": "max"})


def test_max_context_caps_the_context(tiny_llama, tmp_path):
    path = tmp_path / "ctx.toml"
    path.write_text('name = "fp32-ctx32"\n[kv_cache]\nmax_context = 32\n')
    recipe = load_recipe(str(path))
    imported, pm = compile_ir(str(tiny_llama), recipe)
    art = write_artifact(imported, pm, tmp_path / "ctx", device=get_device("host"),
                         backend=get_backend("onnx"), recipe=recipe)
    model = edgec.load(art)
    assert model.manifest["graph"]["context_length"] == model.context_length == 32
    assert model.sequence(1000).capacity == 32
    assert len(model.generate(IDS[:5], max_new_tokens=100, stop_at_eos=False)) == 32 - 5
    with pytest.raises(EdgecError, match="context"):
        model.generate(list(range(3, 40)), max_new_tokens=2)
    with pytest.raises(EdgecError, match="max_context"):
        get_pass("kv_cache").fn(Graph(), max_context=-1)


def test_detokenizer_pieces_join_to_the_full_text():
    tok = tiny_tokenizer()
    ids = tok("Hello, world! Edge devices run small models.\nbye", add_special_tokens=False)["input_ids"]
    ids = ids[:20] + [2] + ids[20:]  # a special token in the middle is skipped
    detok = Detokenizer(tok)
    text = "".join(detok.add(t) for t in ids)
    assert text == tok.decode(ids, skip_special_tokens=True)
    assert detok._read - detok._prefix <= 1  # the window stays one token, not the whole text


def test_cli_max_context(tiny_llama, tmp_path):
    from click.testing import CliRunner

    from edgec.cli import main

    out = tmp_path / "ctx48"
    r = CliRunner().invoke(main, ["build", str(tiny_llama), "-o", str(out), "--max-context", "48", "-q"])
    assert r.exit_code == 0, r.output
    m = edgec.load(out)
    assert m.context_length == 48 and m.manifest["recipe"]["kv_cache"] == {"max_context": 48}
    r = CliRunner().invoke(main, ["build", str(tiny_llama), "-o", str(tmp_path / "bad"), "--max-context", "0"])
    assert r.exit_code == 2 and "max-context" in r.output
