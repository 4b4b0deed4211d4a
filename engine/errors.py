"""The project's exception types. Every input error carries the offending value."""


class NoduleflowError(Exception):
    """Base class: the CLI prints these as one line and exits non-zero."""


class VolumeError(NoduleflowError):
    """A CT volume or series could not be read or is not usable (bad geometry, modality...)."""


class PackageError(NoduleflowError):
    """A model package is missing files, fails its hashes, or has an unknown format."""


class BackendUnavailableError(NoduleflowError):
    """An explicitly requested inference backend is not installed or cannot run here."""


class ConfigError(NoduleflowError):
    """A parameter or configuration value is out of range or inconsistent."""
