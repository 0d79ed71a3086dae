"""User-facing errors: one line that says what is wrong and what to do."""


class EdgecError(Exception):
    """Bad input or an unsupported model; the CLI prints it as one line and exits 2."""


class UnsupportedModelError(EdgecError):
    """The model uses an architecture, op or pattern edgec cannot compile."""


class ArtifactError(EdgecError):
    """An artifact is missing, corrupt, truncated, tampered with or from another format version."""
