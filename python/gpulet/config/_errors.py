"""The one exception the config package raises."""

from __future__ import annotations

__all__ = ["ConfigError"]


class ConfigError(ValueError):
    """A config file, environment variable or flag is wrong.

    The message starts with the path of the offending field, e.g.
    ``sharing.timeSlicing.resources[0].replicas: must be >= 2, got 0``, and says where the value
    came from when that was not the config file itself.

    Attributes:
        path: the field, in the config file's own key names (``""`` for the file as a whole).
        problem: what is wrong and what would be right, without the path.
        origin: where the value came from (``"environment variable MIG_STRATEGY"``,
            ``"flag --mig-strategy"``, ``"config file /etc/gpulet/config.yaml"``), or ``None``.
    """

    path: str
    problem: str
    origin: str | None

    def __init__(self, path: str, problem: str, origin: str | None = None) -> None:
        self.path = path
        self.problem = problem
        self.origin = origin
        message = f"{path}: {problem}" if path else problem
        if origin:
            message += f" ({origin})"
        super().__init__(message)
