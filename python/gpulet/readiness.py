"""NVML readiness: discover the node, or stay up NotReady with the reason and retry.

A node without a driver, or with a driver that does not match its library, must not crash the
agent: it reports NotReady with one sentence (for ``/readyz`` and the node's Events) and tries
again with capped exponential backoff. NVIDIA's ``failOnInitError: true`` asks for the opposite,
and :class:`NvmlProbe` honours it by raising instead.

Time comes from an injectable clock, so tests drive retries without sleeping.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from gpulet.errors import GpuletError

if TYPE_CHECKING:
    from gpulet._core import Node

__all__ = ["NvmlProbe", "Readiness"]


@dataclass(frozen=True)
class Readiness:
    """Whether NVML answered, and if not, why (one sentence) and since when."""

    ready: bool
    reason: str
    since: float


class NvmlProbe:
    """Runs discovery until it succeeds, keeping the last failure as a NotReady reason.

    ``discover`` is :func:`gpulet.discover` (or any callable returning a Node); ``clock``
    returns seconds. ``initial_backoff`` doubles after each failure up to ``max_backoff``.
    """

    def __init__(
        self,
        discover: Callable[[], Node],
        *,
        clock: Callable[[], float] = time.monotonic,
        fail_on_init_error: bool = False,
        initial_backoff: float = 1.0,
        max_backoff: float = 60.0,
    ) -> None:
        if initial_backoff <= 0 or max_backoff < initial_backoff:
            raise ValueError(
                f"backoff must satisfy 0 < initial_backoff <= max_backoff, "
                f"got initial_backoff={initial_backoff}, max_backoff={max_backoff}"
            )
        self._discover = discover
        self._clock = clock
        self._fail = fail_on_init_error
        self._initial = initial_backoff
        self._max = max_backoff
        self._backoff = initial_backoff
        self._node: Node | None = None
        self._readiness = Readiness(False, "NVML has not been probed yet", clock())
        self._next_attempt = clock()
        self.attempts = 0

    @property
    def readiness(self) -> Readiness:
        return self._readiness

    @property
    def node(self) -> Node | None:
        """The discovered node, once a probe has succeeded."""
        return self._node

    def seconds_until_retry(self) -> float:
        """How long until :meth:`poll` will try again (0 when due, or when already ready)."""
        if self._node is not None:
            return 0.0
        return max(0.0, self._next_attempt - self._clock())

    def poll(self) -> Node | None:
        """Try discovery if a retry is due; return the node once it is known.

        Raises the discovery error instead of going NotReady when ``fail_on_init_error``.
        """
        if self._node is not None:
            return self._node
        now = self._clock()
        if now < self._next_attempt:
            return None
        self.attempts += 1
        try:
            node = self._discover()
        except GpuletError as e:
            if self._fail:
                raise
            reason = str(e).splitlines()[0] if str(e) else type(e).__name__
            since = self._readiness.since if not self._readiness.ready else now
            if self._readiness.reason != reason:
                since = now
            self._readiness = Readiness(False, reason, since)
            self._next_attempt = now + self._backoff
            self._backoff = min(self._backoff * 2, self._max)
            return None
        self._node = node
        self._backoff = self._initial
        self._readiness = Readiness(True, f"NVML reports {len(node.gpus)} GPU(s)", now)
        return node
