"""Training utilities: memory and time meters."""
from vqgnn.train.meters import SavedTensorMeter, Timer, peak_rss_bytes

__all__ = ["SavedTensorMeter", "Timer", "peak_rss_bytes"]
