"""Codebooks kept by EMA k-means and the per-layer feature-and-gradient quantizer."""
from vqgnn.quantize.codebook import Codebook, CodebookHealth, noop_all_reduce
from vqgnn.quantize.functional import (
    batch_statistics,
    ema_inplace,
    has_faiss,
    kmeans,
    kmeans_faiss,
    kmeans_torch,
    laplace_smoothing,
    nearest_codeword,
    perplexity,
)
from vqgnn.quantize.options import CodebookOptions
from vqgnn.quantize.quantizer import FeatureGradientQuantizer, RunningStandardizer

__all__ = [
    "Codebook", "CodebookHealth", "CodebookOptions", "FeatureGradientQuantizer",
    "RunningStandardizer",
    "batch_statistics", "ema_inplace", "has_faiss", "kmeans", "kmeans_faiss", "kmeans_torch",
    "laplace_smoothing", "nearest_codeword", "noop_all_reduce", "perplexity",
]
