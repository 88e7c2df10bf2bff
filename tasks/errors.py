"""The one exception type for bad user input."""


class InputError(ValueError):
    """Bad input from the user: the message names the problem and the fix.

    Raised before any expensive work; the CLI prints the message without a traceback and exits 2.
    """


class InputChanged(RuntimeError):
    """An input file changed while a stage read it (a writer still at work): worth a retry."""
