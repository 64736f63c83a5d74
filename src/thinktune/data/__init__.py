"""Data: sources (files, hubs, the bundled sample), row schemas, loading with bad-row reports and splits, and all
reasoning markup. The bottom stage: imports only config, errors and utils."""
