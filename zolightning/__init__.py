"""zolightning: zeroth-order (forward-only) fine-tuning of LLMs with PyTorch Lightning."""

__version__ = "0.1.0"
