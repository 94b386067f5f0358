"""masklm: masked-language-model pretraining and fine-tuning on PyTorch."""

__version__ = "0.1.0"
