"""Throughput benchmarks of the pipeline against bare PyTorch loops (``python -m bench``, ``make bench``).

Every figure is a ratio to a bare loop measured in the same run on the same model, data and batch size,
because absolute numbers on shared machines measure the neighbours. Speed is measured here and never
asserted in tests. See ``bench/__main__.py`` for the options and ``bench/common.py`` for the method.
"""
