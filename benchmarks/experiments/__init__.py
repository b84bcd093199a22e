"""Standalone experiments: figures under the same protocol (benchmarks/figure.py) that ``python -m
benchmarks`` runs only when named (``--only zero3_1b``; ``--list`` lists them): each answers one question
raised by a figure of the default run, needs more memory, time or packages than it, or both."""
