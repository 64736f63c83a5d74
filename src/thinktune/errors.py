"""Every error a user can fix, in one place, by the layer that raises it.

The CLI prints a :class:`ThinktuneError` as one clear message (exit status 2) instead of a traceback; anything
else is a bug and keeps its traceback. Each message names the file, row or setting, the value, and the fix.
"""


class ThinktuneError(Exception):
    """A problem with the user's input, configuration or environment; the message says how to fix it."""


# ------------------------------------------------------------------------------------------ config, data


class ConfigError(ThinktuneError, ValueError):
    """A configuration problem the user must fix; the message names the key, the value and the fix."""


class DataError(ThinktuneError, ValueError):
    """The data cannot be used as given; the message names the file, the rows and the fix."""


# ------------------------------------------------------------------------------------------ formatting


class TemplateError(ThinktuneError, ValueError):
    """The chat template cannot be used safely as configured; the message says why and what to set."""


class ExampleError(ThinktuneError, ValueError):
    """One example (or prompt) cannot be rendered faithfully; the others can. The message names the field.

    Raised for text holding a string the tokenizer reads as a special token (``<|im_end|>`` inside an answer
    would become a real end of turn), a lone surrogate (not encodable), an empty answer, or text the chat
    template itself rewrites (e.g. Qwen3's template strips newlines around the answer). The data doctor lists
    such examples with the bad rows (``data_report.json``)."""


# ------------------------------------------------------------------------------------------ models, run folders


class AssetError(ThinktuneError, RuntimeError):
    """A built-in offline asset (``pkg:...``) is missing or broken; the message gives the pip command."""


class ModelLoadError(ThinktuneError, RuntimeError):
    """The model or tokenizer could not be loaded; the message says what was tried and what to do."""


class RunDirError(ThinktuneError):
    """A run folder is missing a file a command needs (no config.yaml, no adapter yet, no split)."""


# ------------------------------------------------------------------------------------------ plan


class ModelSpecError(ThinktuneError, ValueError):
    """The model's config.json could not be found or describes an architecture plan does not model."""


class PlanError(ThinktuneError, ValueError):
    """A plan request that cannot be estimated as given (the message names the setting and the fix)."""


class DoesNotFitError(ThinktuneError, RuntimeError):
    """The configured run cannot fit on this GPU; the message gives the estimate and overrides that fit."""


# ------------------------------------------------------------------------------------------ inference, evaluation


class GenerationError(ThinktuneError, RuntimeError):
    """Generation cannot run as requested; the message says which setting to change."""


class ChatError(ThinktuneError):
    """`thinktune chat` was asked for something it cannot do (e.g. a run folder and --model together)."""


class MCQError(ThinktuneError, ValueError):
    """A benchmark file cannot be used; the message names the file, the rows and the expected format."""


class EvalError(ThinktuneError):
    """`thinktune eval` or `compare` cannot run as asked (nothing to evaluate, results already there)."""


# ------------------------------------------------------------------------------------------ training


class TrainError(ThinktuneError):
    """A training request that cannot work as configured; the message names the setting and the fix."""


class NumericalError(TrainError):
    """The loss or a gradient became NaN or infinite; the message names the step and the likely causes."""


class GPUOutOfMemory(TrainError):
    """CUDA ran out of memory; the message gives the `thinktune plan` recommendation for the card."""


class DiskFull(TrainError):
    """No space left while writing a checkpoint or the adapter; the previous checkpoint is intact."""


# ------------------------------------------------------------------------------------------ export


class ExportError(ThinktuneError):
    """The export cannot be done as asked; the message says why and what to do."""


class GGUFExportError(ExportError):
    """This model or tokenizer cannot be written as GGUF; the message says why and what works."""


class TemplateExportError(ExportError):
    """The training template cannot be reproduced by an export format; the message says why."""


class GoTemplateError(ThinktuneError, ValueError):
    """The template uses syntax outside the supported subset, or fails to execute."""


# ------------------------------------------------------------------------------------------ web UI


class UIError(ThinktuneError):
    """The web page asked for something refused as given: a path outside the allowed folders, a second GPU job,
    a run that does not exist. The message names the value and the fix; the API answers it with status 400."""


class PathRefused(UIError):
    """A path typed into the page points outside the folders the server was started with (``..``, an absolute
    path elsewhere, a symlink out); the message names the path and the allowed folders (API status 403)."""


class JobConflict(UIError):
    """A GPU job is already running; the message names it and how to override (API status 409)."""


# ------------------------------------------------------------------------------------------ command line


class UsageError(ThinktuneError):
    """A command-line problem: an argument that does not fit the command (exit status 2)."""
