"""Judging generators: the frozen evaluator, its self-test, the metrics and the quality gate.

Kept apart from training (as stylegan2-ada keeps ``metrics/`` apart from ``training/``): judging reads the data
and, for the pixel-space judges, the discriminator design, but never the training loop, the export or the registry.
"""
