"""The errors edgeq raises. Each renders as one line, `Error: <message>. <hint>`, with its own exit code.

The CLI turns an EdgeqError into that line on stderr and exits with `exit_code`; the Python API lets it
propagate, so callers can catch the class they care about.
"""

from __future__ import annotations


class EdgeqError(Exception):
    """Base class. `message` says what is wrong and names the file, key or value; `hint` says what to do."""

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message.rstrip(".")
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message}. {self.hint}" if self.hint else self.message

    def __reduce__(self):  # raised in a child process (edgeq.isolated), re-raised whole in the parent
        return self.__class__, (self.message, self.hint)


class RecipeError(EdgeqError):
    """The recipe file is missing, unparsable or does not match the schema."""


class DeviceError(EdgeqError):
    """A device id or a device profile is unknown or invalid."""


class ModelError(EdgeqError):
    """The model source or an ONNX file cannot be used."""


class DataError(EdgeqError):
    """Calibration or validation data is missing, empty or malformed."""


class OutputError(EdgeqError):
    """An output path cannot be written."""


class ConstraintError(EdgeqError):
    """The requested quantization breaks a rule of the target device."""


class StageError(EdgeqError):
    """A pipeline stage failed for a reason outside the user's input (the message says which stage)."""
