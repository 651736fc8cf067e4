"""Typed errors. Every error a user can cause maps to one clear line and an exit code."""


class Nas2DeployError(Exception):
    """Base class; ``exit_code`` is what the CLI returns for it."""

    exit_code = 1


class UsageError(Nas2DeployError):
    """Bad input or usage: unknown names, malformed options, unreadable files (exit 2)."""

    exit_code = 2


class BundleError(UsageError):
    """A bundle on disk is missing, corrupt or of an unknown format."""


class UnavailableError(UsageError):
    """A runtime, exporter or device the user asked for is not present on this machine."""


class ExportError(Nas2DeployError):
    """An exporter failed to produce or reload its artifact."""


class ShapeError(ExportError):
    """A runtime's output has a different shape than the PyTorch reference."""


class ParityError(ExportError):
    """A runtime's output differs from the PyTorch reference beyond tolerance."""


class PrecisionError(ParityError):
    """An fp16/int8 artifact disagrees with the fp32 model beyond the allowed agreement or
    accuracy drop (exit 1)."""


class BudgetMissed(Nas2DeployError):
    """The measured latency is over budget after every allowed round (exit 3)."""

    exit_code = 3
