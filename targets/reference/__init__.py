"""The reference backend: the IR itself, run by edgec's interpreter (`--backend reference`).

For debugging a model build without any runtime dependency, and the proof that the backend
contract (edgec.backends) is small: this package is written only through it.
"""
