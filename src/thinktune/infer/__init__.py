"""Inference: open a run or a model (one path for eval, compare, chat, export and the reinforcement stage),
batched and streamed generation with one decoding rule, the optional vLLM backend, and chat. Imports rundir,
models, formatting, data and the foundation."""
