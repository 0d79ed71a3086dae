"""edgec/frontend/complex_pairs.py: complex tensors imported as (real, imaginary) pairs.

DeepSeek-V2 rotates q and k by complex multiplication (torch.polar, view_as_complex, mul,
view_as_real); its whole model is tested in test_moe.py. Here the rules themselves, on small
exported programs: the imported graph equals torch, and a complex op without a rule fails naming it.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from edgec.errors import UnsupportedModelError
from edgec.frontend.aten import Importer
from edgec.ir import interpret


class Rotate(torch.nn.Module):
    """DeepSeek-V2's RoPE shape: x [1, H, S, D] rotated pairwise by e^(i * pos * freq) * scale."""

    def __init__(self, scale=1.0):
        super().__init__()
        self.register_buffer("freq", torch.tensor([1.0, 0.3, 0.05, 0.01]))
        self.scale = scale

    def forward(self, pos, x):  # (the importer learns the sequence axis from the first [1, seq] input)
        angle = pos[..., None].float() * self.freq                      # [1, S, D/2]
        cis = torch.polar(torch.ones_like(angle), angle) * self.scale
        z = torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2))
        return torch.view_as_real(z * cis.unsqueeze(1)).flatten(3)


class Magnitude(Rotate):
    """A complex op without a rule: the pairs' modulus."""

    def forward(self, pos, x):  # (the importer learns the sequence axis from the first [1, seq] input)
        return torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2)).abs()


def _import(module, seq=5):
    x, pos = torch.randn(1, 2, seq, 8), torch.arange(seq)[None]
    s = torch.export.Dim("seq", min=1, max=64)
    ep = torch.export.export(module, (pos, x), dynamic_shapes=({1: s}, {2: s}), strict=False)
    return Importer(ep, "test").run(), x, pos


@pytest.mark.parametrize("scale", [1.0, 0.5])
def test_complex_rotation_imports_as_pairs_and_equals_torch(scale):
    module = Rotate(scale)
    graph, _, _ = _import(module)
    for seq in (1, 9):
        x, pos = torch.randn(1, 2, seq, 8), torch.arange(3, 3 + seq)[None]
        feeds = {v.name: t.numpy() for v, t in zip(graph.inputs, (pos, x))}
        out = next(iter(interpret(graph, feeds).values()))
        np.testing.assert_allclose(out, module(pos, x).numpy(), rtol=1e-5, atol=1e-5)


def test_a_complex_op_without_a_rule_fails_naming_it():
    with pytest.raises(UnsupportedModelError, match="aten.abs.default on complex tensors") as e:
        _import(Magnitude())
    assert "\n" not in str(e.value)
