"""thinktune: fine-tune reasoning language models on chain-of-thought data, correctly, on the GPU you own."""

__version__ = "0.1.0"
