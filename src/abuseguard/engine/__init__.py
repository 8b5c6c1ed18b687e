"""The embedded engine: preallocated state tables and the Numba kernels that work on them."""
