"""Formatting: the one Formatter (every example and prompt through the model's own chat template) and the data
doctor (token lengths, what a max_length cuts, the length policy). Imports only config, errors, utils and data."""
