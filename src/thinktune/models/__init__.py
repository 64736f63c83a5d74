"""Models: loading (one path for tokenizers, models and adapters), the one quantization builder, the one
attention resolver, the one precision decision, the offline assets, and the CPU fast-path kernels.
Imports only config, errors, utils, data and formatting."""
