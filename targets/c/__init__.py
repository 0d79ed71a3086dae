"""C target: the IR as generated C plus edgec's small runtime (targets/c/runtime/), compiled by the
device's toolchain into one shared library that needs nothing but libc, libm and pthreads."""
