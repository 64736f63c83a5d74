"""The subcommands of `thinktune`, one module per area. Each `add_<name>(sub)` builds a subparser (with an
example in its epilog) and returns the handler; handlers stay thin and import their heavy modules lazily."""
