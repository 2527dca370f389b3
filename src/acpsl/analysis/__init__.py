"""Analyses of trained split models (the RandTopk paper's neuron-selection histogram)."""

from acpsl.analysis.topk_histogram import topk_histogram

__all__ = ["topk_histogram"]
