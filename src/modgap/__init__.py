"""modgap: train multimodal models from unpaired data by closing the modality gap."""

from modgap.errors import ModgapError

__version__ = "0.1.0"
__all__ = ["ModgapError", "__version__"]
