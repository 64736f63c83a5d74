"""Training: the SFT recipe (and the reinforcement stage), the trainer builders, pre-flight refusals, the run
folder's lifecycle, checkpoints, failures and callbacks. The only layer that talks to TRL. Imports evals (the
grader is the reward), infer (sampling), report (plots) and everything below."""
