"""Throughput benchmarks of the pipeline against bare PyTorch loops (``python -m bench``, ``make bench``).

Every figure is a ratio to a bare loop measured in the same run on the same model, data and batch size,
because absolute numbers on shared machines measure the neighbours. Speed is measured here and never
asserted in tests. See ``bench/__main__.py`` for the options, ``bench/harness.py`` for the method (timing,
interleaving, environment, results), ``bench/bare.py`` for the bare loops and ``bench/cache.py`` for the
teacher checkpoints the benchmarks train once or make.
"""
