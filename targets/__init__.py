"""Backends: each lowers the IR to something that runs on a device."""
