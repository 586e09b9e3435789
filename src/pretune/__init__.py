"""pretune: the pre-train, then fine-tune recipe of GPT-1 and BERT in plain PyTorch."""

from pretune.errors import PretuneError

__version__ = "0.1.0"
__all__ = ["PretuneError", "__version__"]
