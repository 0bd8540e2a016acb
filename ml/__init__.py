"""lenslab's science: base representations, the interpretable lens (ILVM), acquisition and metrics.

Pure PyTorch / NumPy / scikit-learn. Usable from a notebook; never imports ``app``.
"""

__all__ = ["__version__"]
__version__ = "0.1.0"
