"""xai_lightning: find out which concept a vision model relies on, while it trains, by network surgery into CLIP."""

__version__ = "0.1.0"
