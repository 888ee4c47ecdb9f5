"""int8 (CPU) and fp16 (CUDA) bundles with a fidelity gate. Not implemented yet (see issue 3)."""
