"""The MatMulNBits kernels of an ONNX model (edgec's ONNX artifacts, onnxruntime-genai) timed apart.

After the runs, every MatMulNBits of the model in one graph with nothing else,
timed at batch 1 on the same threads and in the page size the system itself
uses (2 MiB for edgec, see edgec/memory.py): the best decode speed any graph
built on onnxruntime's kernels could reach, so the share of it a system reaches
is what its other ops and overheads cost. For edgec artifacts also the
reverse: the same artifact with every MatMulNBits replaced by a Pad/Slice of
the right shape (graph_without_matmulnbits), run through the shared runtime.
Each measurement runs in a fresh process.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from decode_systems import SYSTEMS, in_huge_pages


def onnx_graph(name: str, path: Path) -> Path | None:
    """The ONNX file of a prepared system whose kernels can be timed apart (None: not an ONNX model)."""
    f = {"edgec": path / "model" / "model.onnx", "ortgenai": path / "model.onnx"}.get(SYSTEMS[name]["kind"])
    return f if f is not None and f.is_file() else None


def matmulnbits_summary(path: Path) -> str | None:
    """e.g. "151 MatMulNBits: block 32, accuracy_level 4, no zero points" (None without MatMulNBits)."""
    from collections import Counter

    import onnx

    kinds = Counter()
    for node in onnx.load(str(path), load_external_data=False).graph.node:
        if node.op_type == "MatMulNBits":
            a = {x.name: onnx.helper.get_attribute_value(x) for x in node.attribute}
            zp = len(node.input) > 3 and node.input[3] != ""
            kinds[(a.get("bits", 4), a.get("block_size"), a.get("accuracy_level", 0), zp)] += 1
    return "; ".join(f"{n} MatMulNBits: {b}-bit, block {bs}, accuracy_level {acc}, "
                     f"{'zero points' if zp else 'no zero points'}" for (b, bs, acc, zp), n in kinds.items()) or None


def matmulnbits_floor(path: Path, threads: int, huge_pages: bool = False, env: dict | None = None) -> dict | None:
    """The time one decode token spends in the model's MatMulNBits kernels alone.

    A one-graph copy of every MatMulNBits of the model (same shapes, bits,
    block sizes and accuracy levels; random weights of the same size, since
    speed does not depend on the values) and nothing else, run at batch 1
    with the same threads: as many bytes stream through the caches per run as
    in a decode step. What the model's graph could reach at best with
    onnxruntime's kernels, and so what is left to gain around them.
    huge_pages: the session's memory moved to huge pages as edgec's runtime
    does (edgec/memory.py); env: the system's own process environment.
    """
    code = r"""
import json, sys, time
import numpy as np, onnx, onnxruntime as ort
from onnx import helper, numpy_helper, TensorProto
path, threads, huge = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1"
rng = np.random.default_rng(0)
nodes, inits, ks, outs = [], [], set(), []
for i, n in enumerate(x for x in onnx.load(path, load_external_data=False).graph.node if x.op_type == "MatMulNBits"):
    a = {x.name: helper.get_attribute_value(x) for x in n.attribute}
    k, nn, bits, bs = a["K"], a["N"], a.get("bits", 4), a["block_size"]
    blocks = -(-k // bs)
    inits += [numpy_helper.from_array(rng.integers(0, 256, (nn, blocks, bs * bits // 8), dtype=np.uint8), f"b{i}"),
              numpy_helper.from_array(rng.uniform(1e-3, 1e-2, nn * blocks).astype(np.float32), f"s{i}")]
    nodes.append(helper.make_node("MatMulNBits", [f"a{k}", f"b{i}", f"s{i}"], [f"y{i}"], domain="com.microsoft",
                                  K=k, N=nn, bits=bits, block_size=bs, accuracy_level=a.get("accuracy_level", 0)))
    ks.add(k)
    outs.append((f"y{i}", nn))
g = helper.make_graph(nodes, "floor", [helper.make_tensor_value_info(f"a{k}", TensorProto.FLOAT, [1, 1, k]) for k in ks],
                      [helper.make_tensor_value_info(y, TensorProto.FLOAT, [1, 1, nn]) for y, nn in outs], inits)
m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("com.microsoft", 1)])
so = ort.SessionOptions(); so.intra_op_num_threads = threads
so.add_session_config_entry("session.intra_op.allow_spinning", "1")
from edgec.memory import HugePages
with HugePages(enabled=huge):
    sess = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
b = sess.io_binding()
for k in ks:
    b.bind_cpu_input(f"a{k}", rng.standard_normal((1, 1, k)).astype(np.float32))
for y, nn in outs:
    b.bind_ortvalue_output(y, ort.OrtValue.ortvalue_from_numpy(np.empty((1, 1, nn), np.float32)))
for _ in range(10):
    sess.run_with_iobinding(b)
ts = []
for _ in range(15):
    t0 = time.perf_counter()
    for _ in range(20):
        sess.run_with_iobinding(b)
    ts.append((time.perf_counter() - t0) / 20)
print(json.dumps({"ms_per_token": round(float(np.median(ts)) * 1000, 3), "nodes": len(nodes)}))
"""
    model = path / "model" / "model.onnx" if (path / "model").is_dir() else path
    p = subprocess.run([sys.executable, "-c", code, str(model), str(threads), "1" if huge_pages else "0"],
                       capture_output=True, text=True, env=dict(os.environ, **(env or {})))
    if p.returncode != 0:
        return None
    return json.loads(p.stdout)


def graph_without_matmulnbits(artifact: Path, threads: int) -> float | None:
    """ms per decode token of an edgec artifact whose MatMulNBits are all replaced by a Pad or
    Slice of the right shape: the cost of everything else (attention, norms, SwiGLU, glue, the
    session's per-run work). Beside matmulnbits_floor it splits a decode step in two."""
    code = r"""
import hashlib, json, shutil, sys, tempfile, time
from pathlib import Path
import numpy as np, onnx
from onnx import helper, numpy_helper
import edgec
src, threads = Path(sys.argv[1]), int(sys.argv[2])
with tempfile.TemporaryDirectory() as tmp:
    art = Path(tmp) / "art"
    shutil.copytree(src, art, ignore=shutil.ignore_patterns("*.data"))
    for f in (src / "model").glob("*.data"):  # onnxruntime refuses symlinked external data
        try:
            (art / "model" / f.name).hardlink_to(f)
        except OSError:
            shutil.copy(f, art / "model" / f.name)
    m = onnx.load(str(art / "model" / "model.onnx"), load_external_data=False)
    nodes = []
    for n in m.graph.node:
        if n.op_type != "MatMulNBits":
            nodes.append(n)
            continue
        a = {x.name: helper.get_attribute_value(x) for x in n.attribute}
        k, nn = a["K"], a["N"]
        def const(suffix, v):
            m.graph.initializer.append(numpy_helper.from_array(np.array(v, np.int64), n.name + suffix))
            return n.name + suffix
        if nn >= k:
            nodes.append(helper.make_node("Pad", [n.input[0], const("_pads", [0, 0, 0, 0, 0, nn - k])], [n.output[0]]))
        else:
            nodes.append(helper.make_node("Slice", [n.input[0], const("_s", [0]), const("_e", [nn]), const("_a", [2])],
                                          [n.output[0]]))
    del m.graph.node[:]
    m.graph.node.extend(nodes)
    onnx.save(m, str(art / "model" / "model.onnx"))
    # the edited graph is a new artifact: list its model.onnx anew (unsigned: it is no build's output)
    man = json.loads((art / "manifest.json").read_text())
    blob = (art / "model" / "model.onnx").read_bytes()
    man["files"]["model/model.onnx"] = {"size": len(blob), "sha256": hashlib.sha256(blob).hexdigest()}
    man["total_size"] = sum(e["size"] for e in man["files"].values())
    (art / "manifest.json").write_text(json.dumps(man))
    (art / "signature.json").unlink(missing_ok=True)
    model = edgec.load(art, threads=threads, allow_unsigned=True)
    prompt = list(range(100, 116))
    def step_ms(n=64):
        seq = model.sequence(len(prompt) + n)
        seq.run(prompt, last_only=True)
        t0 = time.perf_counter()
        for _ in range(n - 1):
            seq.run([5])
        return (time.perf_counter() - t0) / (n - 1) * 1000
    step_ms(8)
    print(float(np.median([step_ms() for _ in range(9)])))
"""
    p = subprocess.run([sys.executable, "-c", code, str(artifact), str(threads)], capture_output=True, text=True)
    return round(float(p.stdout.strip().splitlines()[-1]), 3) if p.returncode == 0 and p.stdout.strip() else None


def kernel_floors(names: list[str], onnx_files: dict[str, Path], paths: dict[str, Path], threads: int,
                  say) -> dict[str, dict]:
    """name -> {ms_per_token, nodes, pages[, rest_ms]} for the systems in onnx_files (with every worker closed)."""
    floors = {}
    for n in names:
        if n not in onnx_files:
            continue
        say(f"{n}: timing its MatMulNBits kernels alone")
        spec = SYSTEMS[n]
        # edgec moves the floor's weights itself, as its runtime does; glibc's tunable comes with env
        floors[n] = matmulnbits_floor(onnx_files[n], threads, spec["kind"] == "edgec" and in_huge_pages(spec),
                                      spec.get("env"))
        if floors[n] is not None:
            floors[n]["pages"] = "2 MiB" if in_huge_pages(spec) else "4 KiB"
        if floors[n] is not None and spec["kind"] == "edgec":
            floors[n]["rest_ms"] = graph_without_matmulnbits(paths[n], threads)
    return floors
