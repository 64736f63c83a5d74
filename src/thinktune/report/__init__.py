"""The report: every plot (the loss curve, the length histogram, the report's charts) and the self-contained HTML
page. A pure reader of run folders. Imports evals (health metrics) and everything below."""
