"""Fast neural style transfer with swappable normalization layers."""

__version__ = "0.1.0"
