"""Helpers the agent's integration tests share: an in-process agent on a kubelet root, and a
bounded wait for a cheap local condition."""

from __future__ import annotations

import pathlib
import time
from collections.abc import Callable
from typing import Any

from gpulet import config
from gpulet.agent import Agent, AgentOptions
from gpulet.testing.kubelet import WAIT


def make_agent(root: pathlib.Path, doc: dict[str, Any] | None = None, **options: Any) -> Agent:
    """An agent (no health monitor, no probe port) serving the kubelet root ``root``, with
    the config ``doc`` (NVIDIA's defaults when ``None``) and option overrides."""
    d: dict[str, Any] = {"version": "v1", **(doc or {})}
    d["gpulet"] = {**d.get("gpulet", {}), "kubeletRoot": str(root), "metricsPort": 0}
    cfg = config.parse(d)
    opts = {"reconcile_interval": 3600.0, **options}
    return Agent(cfg, AgentOptions.from_config(cfg, cdi_root=root / "cdi", **opts), health=None)


def wait_until(condition: Callable[[], object], what: str, timeout: float = WAIT) -> None:
    """Poll a cheap local condition (a file appearing, a counter) with a limit."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not seen within {timeout}s")
        time.sleep(0.01)
