"""Opt-in CPU kernels that keep the arithmetic and remove passes over memory: the one-pass LM-head loss
(training), shared LoRA dropout and one-node LoRA projections (training and mixed-adapter decoding), and the
transposed output head for decoding. Each has an equivalence test against the path it replaces."""
