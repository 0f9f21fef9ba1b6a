"""The one exception the config package raises, and how its messages quote values."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from gpulet.errors import GpuletError

__all__ = ["ConfigError", "show"]

#: Longest quoted text in a message; longer text is cut and its length given.
MAX_SHOWN = 60


class ConfigError(GpuletError, ValueError):
    """A config file, environment variable or flag is wrong, or names what the node lacks.

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

    def __reduce__(self) -> tuple[type[ConfigError], tuple[str, str, str | None]]:
        return (type(self), (self.path, self.problem, self.origin))


def show(value: object) -> str:
    """``value`` quoted for a message, never long: text is cut at :data:`MAX_SHOWN` characters,
    a number too long to print is described, and a list or mapping is named, not printed (an
    aliased YAML document can hold billions of items)."""
    if isinstance(value, bool) or value is None:
        return repr(value)
    if isinstance(value, int):
        bits = abs(value).bit_length()
        if bits > 64:
            # str() of an int over 4300 digits raises; 2**bits has about bits*log10(2) digits.
            return f"a number of about {int(bits * 0.30103) + 1} digits"
        return repr(value)
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, (str, bytes)):
        if len(value) <= MAX_SHOWN:
            return repr(value)
        return f"{value[:MAX_SHOWN]!r}... ({len(value)} characters)"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, Sequence):
        return "a list"
    return type(value).__name__
