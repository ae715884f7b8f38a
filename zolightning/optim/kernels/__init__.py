"""The noise definition (`philox.py`), its PyTorch reference passes (`perturbation.py`) and the Triton kernels."""
