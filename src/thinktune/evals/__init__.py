"""Evaluation: held-out loss by span, the one grader (multiple-choice questions, read the chosen letter, score
with intervals and baselines), reasoning health, before/after comparison, and the records they write. Imports
infer and everything below it; the reinforcement stage's reward imports the grader from here."""
