"""The gpulet agent: one process per GPU node, wiring the pieces together.

- :class:`Agent` and :class:`AgentOptions` (``gpulet.agent.agent``): the process: the agent
  lock, NVML, the node inventory (``gpulet.inventory``), the device plugin's state and servers
  (``gpulet.deviceplugin``), CDI, registration with the kubelet, PodResources reconciliation,
  SIGHUP reloads. The agent decides nothing itself: the state objects below it do.
- ``gpulet.agent.inotify``: the kubelet-directory watcher.
- ``gpulet.agent.lock``: one agent per kubelet root.
- ``gpulet.agent.http``: ``/healthz`` and ``/readyz``.
"""

from __future__ import annotations

from gpulet.agent.agent import Agent, AgentOptions, StartupError

__all__ = ["Agent", "AgentOptions", "StartupError"]
