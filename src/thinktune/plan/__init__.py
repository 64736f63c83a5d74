"""The memory plan: architecture facts from a config.json alone, the memory model of a LoRA/QLoRA training step,
recommendations that fit a VRAM budget, and the plan report. Loads no weights. Imports rundir and below."""
