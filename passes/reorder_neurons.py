"""Hot-first neuron order: profile every FFN's neurons on calibration text and permute them, most active first.

Hot/cold offloading (PowerInfer) keeps a prefix of each FFN's neurons resident and reads the rest on
demand; with the neurons sorted by how often they are active, "the hot set" is simply the first H
channels, so a planner or runtime needs no index table. The permutation moves each neuron's gate/up
rows and its down column together (passes/lib/ffn.take_channels), so the model computes exactly what
it computed before (a test checks that).

The profile (edgec/activations.py) is measured here, or read from `profile` (an activations.json of the
same model: a profile of another model is refused), is stored in the artifact as activations.json in
the new neuron order, and the pass's summary says whether a static hot set pays on this model and why.
Run it before any quantization of the down projection: its groups run along the neurons, and a
permutation would split them (take_channels refuses, naming the layer).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from edgec.activations import PROFILE_FILE, ActivationProfile, check_matches, \
    profile_activations, static_hot_set_verdict
from edgec.errors import EdgecError
from edgec.ir import Graph

from .lib.ffn import find_ffns, take_channels
from .registry import PassResult, register_pass


def _permuted(layer, order: np.ndarray):
    layer.fired, layer.mean_abs, layer.abs_max = layer.fired[order], layer.mean_abs[order], layer.abs_max[order]
    layer.active = layer.active[:, order]
    return layer


@register_pass("reorder_neurons", needs_calibration=True, profile="", permute=True)
def reorder_neurons(graph: Graph, ctx, profile="", permute=True) -> PassResult:
    """Permute each FFN's neurons most-active first (outputs unchanged); store the profile and the verdict.
    permute = false only measures and stores the profile (for a down projection already quantized along the
    neurons, e.g. a GGUF source's: hot/cold offloading reads the hot set from the profile instead)."""
    ffns = find_ffns(graph)
    if not ffns and not any(n.op == "moe" for n in graph.nodes):  # a MoE model: its routing profile only
        raise EdgecError(f"reorder_neurons: found no FFN in this {graph.facts.architecture or 'model'} graph")
    sha = None
    if ctx.source is not None:
        from edgec.frontend import model_hash

        sha = model_hash(ctx.source)
    if profile:
        path = Path(profile)
        if not path.is_file():
            raise EdgecError(f"reorder_neurons: profile {profile} not found; pass an activations.json "
                             "(edgec activations MODEL --json does not write one: build once without `profile`)")
        prof = ActivationProfile.from_json(path.read_text(), str(path))
        check_matches(prof, graph, sha)
    else:
        prof = profile_activations(graph, ctx.windows(), progress=ctx.progress, sha256=sha,
                                   calibration={"source": str(ctx.calib.source)})
    moved = 0
    for ffn, layer in zip(ffns, prof.layers if permute else []):
        order = layer.hot_order()
        moved += int((order != np.arange(len(order))).sum())
        take_channels(graph, ffn, order)
        _permuted(layer, order)
    graph.attachments[PROFILE_FILE] = prof.to_json()
    pays, why = static_hot_set_verdict(prof)
    verdict = "pays" if pays else "does not pay"
    did = f"reordered {len(ffns)} FFNs hot-first ({moved} neurons moved)" if permute else \
        f"profiled {len(ffns)} FFNs (order kept)"
    if prof.experts:  # what hot/cold offloading of experts ranks them by
        did += f", the routing of {len(prof.experts)} MoE layers"
    return PassResult(f"{did}; static hot set {verdict}: "
                      f"{why}", {"ffns": len(ffns), "moved": moved, "hot_set_pays": int(pays)})
