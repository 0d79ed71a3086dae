"""Analyses shared by the passes; registers no pass.

- linears: the stored forms of a linear's weight, and taking its rows / columns in every form.
- ffn: finding FFNs (MLPs) in every form the IR has, and permuting / slicing their channels.
- activations: bounded statistics of activations over the calibration windows.
"""
