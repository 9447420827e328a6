"""Random-weight components of the public checkpoints' shapes and offline tokenizers, for tests, benchmarks and
``random:ARCH``; the production loader imports them only when asked for random weights."""
