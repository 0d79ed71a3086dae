"""The C backend's lowering of mixture-of-experts layers under a memory budget: whole experts are the bundles.

edgec/offload.py's plan_experts says which experts of each `moe` stay resident; on a copy of the graph every moe
with cold experts becomes `moe_offload(x, router, gate_up_hot, down_hot, where)`, lowered by the code generator
to runtime/moe.h's ec_moe with an ec_moe_cold (offload.h). Its resident experts are the stacked rows of the
hot experts only ([n_hot*2I, d] and [n_hot*d, I], fp32 or fp16 as the model stores them), `where` [E] int32
says for each expert its resident block (>= 0) or -1 - its bundle in cold.bin. The moe's biases (GPT-OSS's router
and expert biases, ops_moe.moe_biases) are small: they stay resident, every expert's, as the inputs "<name>_bias"
of the moe_offload. The cold experts are written to cold.bin in ascending order per layer, each one bundle:

    gate_up rows [2I, d] | zeros to a 64-byte boundary (down_at) | down rows [d, I] | zeros to 4 KiB
exactly the bytes of the resident rows, so a cache slot that holds a bundle is read by the same kernels as the
resident experts and the results are identical. Expert weights that are quantized (or not stored) are not
offloaded: the C runtime refuses them anyway (codegen.py).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from edgec.errors import EdgecError
from edgec.ir import Graph, Node, Value
from edgec.ir.ops_moe import moe_biases

from .offload import BLOCK, COLD_FILE, _copy, _other_memory

ALIGN = 64  # where an expert's down rows start in its bundle (the weights file aligns tensors so)


@dataclass
class Experts:
    """One moe layer whose experts can be offloaded: their stored arrays (fp32, or fp16 behind a cast)."""

    node: Node
    index: int                    # among the graph's moe ops
    gate_up: np.ndarray           # [E, 2I, d]
    down: np.ndarray              # [E, d, I]
    casts: list[Node]             # the fp16 casts of gate_up and down (removed with the node)

    @property
    def experts(self) -> int:
        return int(self.gate_up.shape[0])

    @property
    def down_at(self) -> int:
        return -(-self.gate_up[0].nbytes // ALIGN) * ALIGN

    @property
    def bundle(self) -> int:
        return -(-(self.down_at + self.down[0].nbytes) // BLOCK) * BLOCK

    @property
    def slot(self) -> int:
        """An expert's bytes resident (its rows of the two stacked matrices)."""
        return self.gate_up[0].nbytes + self.down[0].nbytes

    def bundle_bytes(self, e: int) -> bytes:
        gu, dn = self.gate_up[e].tobytes(), self.down[e].tobytes()
        return gu + b"\0" * (self.down_at - len(gu)) + dn + b"\0" * (self.bundle - self.down_at - len(dn))


def _stored(graph: Graph, v: Value) -> tuple[np.ndarray | None, Node | None]:
    """The array behind expert weights v: a float32 weight, or a float16 weight behind its cast (and the cast)."""
    if v.kind == "weight" and v.dtype == "float32":
        return np.asarray(graph.weight(v)), None
    p = v.producer
    if p is not None and p.op == "cast" and p.inputs[0].kind == "weight" and p.inputs[0].dtype == "float16":
        return np.asarray(graph.weight(p.inputs[0])), p
    return None, None


def find_experts(graph: Graph) -> tuple[list[Experts], list[str]]:
    """The moe layers whose experts this lowering can offload, in graph order, and why the others cannot."""
    users = graph.users()
    found, why = [], []
    for i, n in enumerate(x for x in graph.nodes if x.op == "moe"):
        (gu, gcast), (dn, dcast) = _stored(graph, n.inputs[2]), _stored(graph, n.inputs[3])
        name = n.inputs[2].name
        if gu is None or dn is None or gu.dtype != dn.dtype:
            why.append(f"{name}: its experts are not stored fp32 or fp16 weights (quantized experts are not offloaded)")
            continue
        casts = [c for c in (gcast, dcast) if c is not None and all(u is n for u in users.get(c.output, []))]
        found.append(Experts(n, i, gu, dn, casts))
    return found, why


def _stored_bytes(graph: Graph, v: Value) -> int:
    """The bytes of the weight behind v (a weight, or a weight through a cast), 0 if computed."""
    w = v if v.kind == "weight" else v.producer.inputs[0] if v.producer and v.producer.inputs else None
    return graph.weights.info(w.name).nbytes if w is not None and w.kind == "weight" else 0


def costs(graph: Graph, found: list[Experts]):
    """edgec.offload.ExpertCost of each layer and the memory bytes of every other weight the model reads."""
    from edgec.offload import ExpertCost

    out = []
    for f in found:
        resident = [f.node.inputs[1], *moe_biases(f.node).values()]  # the router and the biases
        fixed = sum(_stored_bytes(graph, v) for v in resident) + 4 * f.experts
        out.append(ExpertCost(f.node.inputs[0].name, f.experts, int(f.node.attrs["top_k"]), f.bundle, f.slot, fixed))
    skip = SimpleNamespace(removed=[f.node for f in found])
    return out, _other_memory(graph, [skip])


def _rows(g: Graph, name: str, a: np.ndarray) -> Value:
    """Stacked expert rows as a weight the moe_offload reads: fp32 as is, fp16 through a cast (folded by codegen)."""
    w = g.add_weight(name, np.ascontiguousarray(a))
    if a.dtype == np.float32:
        return w
    cast = g.make_node("cast", [w], {"dtype": "float32"}, name=f"{name}.cast")
    return cast.output


def lower(graph: Graph, plan, out_dir: Path) -> tuple[Graph, int]:
    """The graph with the plan's MoE layers that have cold experts as moe_offload nodes, and cold.bin written in
    out_dir; returns (graph, cold.bin's size)."""
    from edgec.passes.dce import dce

    g = _copy(graph)
    found = find_experts(g)[0]
    if len(found) != len(plan.layers):
        raise EdgecError("internal: the MoE plan does not match the graph's moe layers")
    offset, k = 0, 0
    with open(Path(out_dir) / COLD_FILE, "wb") as fh:
        for f, p in zip(found, plan.layers):
            if not len(p.cold):
                continue  # every expert resident: the layer stays as it was
            for e in p.cold:
                fh.write(f.bundle_bytes(int(e)))
            n, a = f.node, f.node.attrs
            d, inter = int(f.down.shape[1]), int(f.down.shape[2])
            ins = {"x": n.inputs[0], "router": n.inputs[1]}
            new: list[Node] = []
            if len(p.hot):
                for role, arr in (("gate_up", f.gate_up[p.hot].reshape(-1, d)),
                                  ("down", f.down[p.hot].reshape(-1, inter))):
                    ins[role] = _rows(g, f"moe_offload{k}.{role}", arr)
                    if ins[role].producer is not None:
                        new.append(ins[role].producer)
            where = np.empty(f.experts, np.int32)
            where[p.hot] = np.arange(len(p.hot))
            where[p.cold] = -1 - np.arange(len(p.cold))
            ins["where"] = g.add_weight(f"moe_offload{k}.where", where)
            ins.update((f"{name}_bias", v) for name, v in moe_biases(n).items())  # resident, every expert's
            off = {"id": k, "experts": f.experts, "d": d, "inter": inter, "n_cold": int(len(p.cold)),
                   "offset": offset, "bundle": f.bundle, "down_at": f.down_at, "stream": int(plan.mode == "stream"),
                   "slots": int(plan.slots), "slot_bytes": int(plan.slot_bytes),
                   "dtype": "float16" if f.gate_up.dtype == np.float16 else "float32", "roles": list(ins)}
            node = Node("moe_offload", list(ins.values()), [n.output], {**a, "offload": off})
            n.output.producer = node
            at = g.nodes.index(n)
            g.nodes[at:at + 1] = [*new, node]
            for c in f.casts:
                if c in g.nodes:
                    g.nodes.remove(c)
            offset += len(p.cold) * f.bundle
            k += 1
    dce(g)
    return g, offset
