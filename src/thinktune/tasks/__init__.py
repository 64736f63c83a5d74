"""Benchmark tasks: loading questions, building prompts, extracting and grading answers (MCQ letters, ...)."""
