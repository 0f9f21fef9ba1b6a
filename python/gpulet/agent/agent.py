"""The agent process: NVML, state, CDI, the device-plugin servers, and the kubelet.

Start-up, in the order DESIGN.md fixes: wait for NVML (NotReady with the reason meanwhile, or
exit under ``failOnInitError``); build the inventory and the state (topology prepared once);
(checkpoint: later) reconcile with PodResources; write the CDI spec; serve one gRPC server per
resource; register each with the kubelet.

Then the agent lives on events, not polling: an inotify watch on the device-plugins directory
re-registers every resource as soon as the kubelet's ``kubelet.sock`` is created again (a
kubelet restart), and restarts a server whose socket was removed (a starting kubelet removes
them all). A failed registration is retried with backoff until the next kubelet socket appears.
PodResources is reconciled shortly after each Allocate and at an interval. On stop every server
stops and its socket is removed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pathlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import gpulet
from gpulet import alloc, cdi
from gpulet._core import Node
from gpulet.agent.http import ProbeServer
from gpulet.agent.inotify import DirEvent, DirWatcher
from gpulet.agent.state import AgentState, ReconcileReport
from gpulet.alloc import Ledger
from gpulet.config import Config
from gpulet.deviceplugin.podresources import PodResourcesClient, PodResourcesError
from gpulet.deviceplugin.registration import RegistrationError, register
from gpulet.deviceplugin.resources import Inventory, build_inventory
from gpulet.deviceplugin.responses import ResponseSettings
from gpulet.deviceplugin.server import PluginServer
from gpulet.readiness import NvmlProbe, Readiness

__all__ = ["DEFAULT_CDI_ROOT", "Agent", "AgentOptions"]

log = logging.getLogger("gpulet.agent")

DEFAULT_CDI_ROOT = "/var/run/cdi"
_CDI_STRATEGIES = {"cdi-annotations", "cdi-cri"}


@dataclass(frozen=True)
class AgentOptions:
    """Where the agent finds the kubelet and writes its files (beyond the config)."""

    #: The kubelet's registration socket; the device-plugin sockets go beside it.
    kubelet_socket: pathlib.Path
    #: The kubelet's PodResources socket.
    pod_resources_socket: pathlib.Path
    #: Where the CDI spec is written (``None``: no spec).
    cdi_root: pathlib.Path | None = pathlib.Path(DEFAULT_CDI_ROOT)
    #: Where device nodes are on the host.
    dev_root: str = "/"
    #: Where the driver is installed, for the CDI spec's library mounts (``None``: none).
    driver_root: str | None = None
    #: The CDI hook binary named in the spec.
    hook_path: str = "/usr/bin/nvidia-ctk"
    #: Seconds between PodResources reconciliations (besides those after Allocate).
    reconcile_interval: float = 30.0
    #: Seconds after an Allocate before reconciling (the kubelet records it meanwhile).
    reconcile_delay: float = 1.0
    #: Seconds one Register call may take.
    register_timeout: float = 5.0
    #: Probe endpoint (``/healthz``, ``/readyz``); ``None``: off.
    http_port: int | None = None
    http_host: str = "0.0.0.0"

    @property
    def plugin_dir(self) -> pathlib.Path:
        return self.kubelet_socket.parent

    @classmethod
    def from_config(
        cls,
        config: Config,
        *,
        cdi_root: str | os.PathLike[str] | None = DEFAULT_CDI_ROOT,
        driver_root: str | os.PathLike[str] | None = None,
        http_host: str = "0.0.0.0",
        **overrides: Any,
    ) -> AgentOptions:
        root = pathlib.Path(config.gpulet.kubelet_root)
        port = config.gpulet.metrics_port
        values: dict[str, Any] = {
            "kubelet_socket": pathlib.Path(config.kubelet_socket),
            "pod_resources_socket": root / "pod-resources" / "kubelet.sock",
            "cdi_root": None if cdi_root is None else pathlib.Path(cdi_root),
            "dev_root": config.flags.nvidia_dev_root,
            "driver_root": None if driver_root is None else os.fspath(driver_root),
            "hook_path": config.flags.plugin.nvidia_ctk_path,
            "http_port": port if port else None,
            "http_host": http_host,
        }
        values.update(overrides)
        return cls(**values)


class Monitor(Protocol):
    def start(self) -> None: ...
    def stop(self) -> None: ...


#: Makes a health monitor for a node, reporting to ``on_change(device_id, healthy, reason)``.
MonitorFactory = Callable[[Node, Callable[[str, bool, str], None]], Monitor]


def default_health_monitor(config: Config) -> MonitorFactory | None:
    """The health engine (:class:`gpulet.health.HealthMonitor`) under the config's policy."""
    if config.gpulet.health.disabled:
        return None

    def make(node: Node, on_change: Callable[[str, bool, str], None]) -> Monitor:
        from gpulet.health import HealthMonitor

        return HealthMonitor(config.gpulet.health, node, on_change=on_change)

    return make


@dataclass
class _Registration:
    generation: int = -1
    task: asyncio.Task[None] | None = None
    task_generation: int = -1


@dataclass
class AgentStats:
    """Counters for logs, tests and metrics."""

    registrations: int = 0
    registration_failures: int = 0
    kubelet_restarts: int = 0
    server_restarts: int = 0
    reconciliations: int = 0
    last_registration: dict[str, float] = field(default_factory=dict)


class Agent:
    """One gpulet agent.

    Args:
        config: the loaded config.
        options: paths and intervals (default: from the config).
        discover: how the node is discovered (default :func:`gpulet.discover`).
        ledger: the ledger to record in (default: a new one).
        health: makes the health monitor (default: the health engine unless the config
            disables it; ``None`` for none).
    """

    def __init__(
        self,
        config: Config,
        options: AgentOptions | None = None,
        *,
        discover: Callable[[], Node] | None = None,
        ledger: Ledger | None = None,
        health: MonitorFactory | bool | None = True,
    ) -> None:
        self.config = config
        self.options = options if options is not None else AgentOptions.from_config(config)
        self._probe = NvmlProbe(
            discover if discover is not None else gpulet.discover,
            fail_on_init_error=config.flags.fail_on_init_error,
        )
        self._ledger = ledger
        self._health_factory: MonitorFactory | None = (
            default_health_monitor(config) if health is True else (health or None)
        )
        self.node: Node | None = None
        self.state: AgentState | None = None
        self.inventory: Inventory | None = None
        self.servers: dict[str, PluginServer] = {}
        self.stats = AgentStats()
        self.cdi_spec: pathlib.Path | None = None
        self._monitor: Monitor | None = None
        self._watcher: DirWatcher | None = None
        self._podresources = PodResourcesClient(self.options.pod_resources_socket)
        self._http: ProbeServer | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._registrations: dict[str, _Registration] = {}
        self._generation = 0
        self._resync_lock: asyncio.Lock | None = None
        self._wake: asyncio.Event | None = None
        self._kicked = False
        self._serving_since: float | None = None
        self._stopping = False
        self.registered = asyncio.Event()

    # --- readiness ---------------------------------------------------------------------

    @property
    def readiness(self) -> Readiness:
        """NotReady while NVML is missing or the servers are not up; the reason says why."""
        probe = self._probe.readiness
        if not probe.ready:
            return probe
        if self._serving_since is None or self.inventory is None:
            return Readiness(False, "starting the device-plugin servers", probe.since)
        names = ", ".join(f"{r.name} ({len(r.devices)})" for r in self.inventory.resources)
        return Readiness(True, f"serving {names or 'no resources'}", self._serving_since)

    @property
    def http_port(self) -> int | None:
        return self._http.port if self._http is not None else None

    # --- start-up ----------------------------------------------------------------------

    async def _wait_for_nvml(self) -> Node:
        while True:
            node = await asyncio.to_thread(self._probe.poll)
            if node is not None:
                return node
            r = self._probe.readiness
            log.warning(
                "NotReady: %s (retrying in %.0fs)", r.reason, self._probe.seconds_until_retry()
            )
            await asyncio.sleep(self._probe.seconds_until_retry())

    async def start(self) -> None:
        """Start serving (returns once every server runs and registration has begun)."""
        self._resync_lock = asyncio.Lock()
        self._wake = asyncio.Event()
        if self.options.http_port is not None:
            self._http = ProbeServer(
                lambda: self.readiness, self.options.http_host, self.options.http_port
            )
            try:
                await self._http.start()
            except OSError as e:
                log.warning(
                    "probe endpoint off: cannot listen on port %s: %s", self.options.http_port, e
                )
                self._http = None

        node = await self._wait_for_nvml()
        self.node = node
        inventory = build_inventory(node, self.config)
        for note in inventory.notes:
            log.warning("%s", note)
        state = AgentState(node, self.config, inventory, self._ledger)
        if any(r.whole_gpus and r.devices for r in inventory.resources):
            await asyncio.to_thread(alloc.prepare, node.topology)
        self.inventory, self.state = inventory, state
        log.info(
            "advertising %s",
            ", ".join(f"{n}: {c}" for n, c in inventory.counts().items()) or "nothing",
        )

        # (The checkpoint comes here once there is one.) Then PodResources.
        await self.reconcile()
        if self.options.cdi_root is not None:
            await self._write_cdi()
        self._start_health(node, state)

        plugin_dir = self.options.plugin_dir
        plugin_dir.mkdir(parents=True, exist_ok=True)
        self._watcher = DirWatcher(plugin_dir)
        self._watcher.start()  # before looking at the directory: no event is missed
        settings = ResponseSettings.from_config(
            self.config,
            cdi.read_mig_minors(self.options.driver_root or "/"),
        )
        for r in inventory.resources:
            server = PluginServer(state, r, plugin_dir, settings, on_allocate=self._allocated)
            self.servers[r.name] = server
            self._registrations[r.name] = _Registration()
            await server.start()
        self._serving_since = time.monotonic()
        if self.options.kubelet_socket.exists():
            self._generation += 1
        self._tasks.append(asyncio.create_task(self._watch_loop(), name="gpulet-watch"))
        self._tasks.append(asyncio.create_task(self._reconcile_loop(), name="gpulet-reconcile"))
        await self._resync()

    async def _write_cdi(self) -> None:
        assert self.node is not None
        node, o = self.node, self.options
        served = self.inventory.served if self.inventory is not None else None

        def write() -> pathlib.Path:
            spec = cdi.build_spec(
                node,
                dev_root=o.dev_root,
                driver_root=o.driver_root,
                hook_path=o.hook_path,
                gpus=served,
            )
            assert o.cdi_root is not None
            return cdi.write_spec(spec, o.cdi_root)

        try:
            self.cdi_spec = await asyncio.to_thread(write)
            log.info("wrote CDI spec %s", self.cdi_spec)
        except OSError as e:
            if set(self.config.flags.plugin.device_list_strategy) & _CDI_STRATEGIES:
                raise
            log.warning("no CDI spec: %s", e)

    def _start_health(self, node: Node, state: AgentState) -> None:
        if self._health_factory is None:
            return
        try:

            def on_change(device_id: str, healthy: bool, reason: str) -> None:
                state.set_health(device_id, healthy, reason)

            monitor = self._health_factory(node, on_change)
            monitor.start()
        except Exception as e:  # the agent serves without health monitoring rather than not at all
            log.warning("health monitoring is off: %s", e)
            return
        self._monitor = monitor

    # --- the kubelet -------------------------------------------------------------------

    def _take_events(self, *first: DirEvent) -> bool:
        """Apply ``first`` and every queued directory event; true when the kubelet's socket was
        created."""
        watcher = self._watcher
        assert watcher is not None
        events = list(first)
        while (event := watcher.get_nowait()) is not None:
            events.append(event)
        name = self.options.kubelet_socket.name
        kubelet = any(e.created and e.name == name for e in events)
        if any(e.overflow for e in events):
            kubelet = kubelet or self.options.kubelet_socket.exists()
        if any(e.directory_gone for e in events):
            log.warning("%s was removed; making it again", watcher.path)
            self.options.plugin_dir.mkdir(parents=True, exist_ok=True)
            watcher.rearm()
            kubelet = kubelet or self.options.kubelet_socket.exists()
        if kubelet:
            self._generation += 1
            self.stats.kubelet_restarts += 1
            log.info("the kubelet's socket was created: registering again")
        return kubelet

    async def _watch_loop(self) -> None:
        watcher = self._watcher
        assert watcher is not None
        while True:
            self._take_events(await watcher.get())
            # Serve again first; a starting kubelet removes the sockets just before it creates
            # kubelet.sock, so look for that event once more before registering (one
            # registration per restart, with the new kubelet).
            await self._resync(register=False)
            await asyncio.sleep(0)
            self._take_events()
            await self._resync()

    async def _resync(self, *, register: bool = True) -> None:
        """Serve every resource on a present socket, and register each one that is not
        registered with the current kubelet."""
        assert self._resync_lock is not None
        async with self._resync_lock:
            if self._stopping:
                return
            for name, server in self.servers.items():
                if not server.socket_present():
                    log.info("the socket of %s is gone: serving it again", name)
                    await server.start()
                    self.stats.server_restarts += 1
                    self._registrations[name].generation = -1
            if not register or not self.options.kubelet_socket.exists():
                return
            for name in self.servers:
                self._ensure_registration(name)

    def _ensure_registration(self, name: str) -> None:
        reg = self._registrations[name]
        gen = self._generation
        if reg.generation == gen:
            return
        if reg.task is not None and not reg.task.done():
            if reg.task_generation == gen:
                return
            reg.task.cancel()
        reg.task_generation = gen
        reg.task = asyncio.create_task(self._register(name, gen), name=f"gpulet-register-{name}")

    async def _register(self, name: str, gen: int) -> None:
        server = self.servers[name]
        reg = self._registrations[name]
        delay = 0.05
        while gen == self._generation and not self._stopping:
            if not self.options.kubelet_socket.exists():
                return  # the next kubelet.sock brings the next attempt
            try:
                await register(
                    self.options.kubelet_socket,
                    endpoint=server.endpoint,
                    resource=name,
                    timeout=self.options.register_timeout,
                )
            except RegistrationError as e:
                self.stats.registration_failures += 1
                log.warning("%s (retrying in %.2fs)", e, delay if e.retryable else 30.0)
                await asyncio.sleep(delay if e.retryable else 30.0)
                delay = min(delay * 2, 30.0)
                continue
            reg.generation = gen
            self.stats.registrations += 1
            self.stats.last_registration[name] = time.monotonic()
            log.info("registered %s (endpoint %s)", name, server.endpoint)
            if all(r.generation == self._generation for r in self._registrations.values()):
                self.registered.set()
            return

    async def restart_plugins(self) -> None:
        """Restart every server and register again (SIGHUP, as NVIDIA's plugin does)."""
        assert self._resync_lock is not None
        async with self._resync_lock:
            for server in self.servers.values():
                await server.start()
            self._generation += 1
        await self._resync()

    # --- PodResources ------------------------------------------------------------------

    def _allocated(self) -> None:
        self._kicked = True
        if self._wake is not None:
            self._wake.set()

    async def reconcile(self) -> ReconcileReport | None:
        """Reconcile the state with the kubelet's PodResources List now (``None`` when the
        kubelet could not be asked)."""
        state = self.state
        if state is None:
            return None
        mark = state.mark()
        try:
            listed = await self._podresources.list()
        except PodResourcesError as e:
            log.debug("no reconciliation: %s", e)
            return None
        report = state.reconcile(listed, mark)
        self.stats.reconciliations += 1
        if report.attributed or report.released or report.conflicts:
            log.info(
                "PodResources: %d attributed, %d released%s",
                report.attributed,
                report.released,
                f", conflicts: {'; '.join(report.conflicts)}" if report.conflicts else "",
            )
        return report

    async def _reconcile_loop(self) -> None:
        # Woken by Allocate (then after reconcile_delay) or by a timer; no asyncio.wait_for,
        # which can swallow a cancellation on Python < 3.12.
        wake = self._wake
        assert wake is not None
        loop = asyncio.get_running_loop()
        while True:
            timer = loop.call_later(self.options.reconcile_interval, wake.set)
            try:
                await wake.wait()
            finally:
                timer.cancel()
            if self._kicked:
                await asyncio.sleep(self.options.reconcile_delay)
            self._kicked = False
            wake.clear()
            try:
                await self.reconcile()
            except Exception:  # a reconciliation bug must not end the agent
                log.exception("reconciliation failed")

    # --- shutdown ----------------------------------------------------------------------

    async def stop(self) -> None:
        """Stop everything; every socket this agent made is removed."""
        self._stopping = True
        tasks = list(self._tasks)
        tasks += [r.task for r in self._registrations.values() if r.task is not None]
        for t in tasks:
            t.cancel()
        if tasks:
            # Bounded: a task that swallowed its cancellation must not keep the agent up.
            await asyncio.wait(tasks, timeout=5.0)
        self._tasks.clear()
        if self._monitor is not None:
            monitor, self._monitor = self._monitor, None
            await asyncio.to_thread(monitor.stop)
        for server in self.servers.values():
            await server.stop()
        if self._watcher is not None:
            self._watcher.close()
            self._watcher = None
        await self._podresources.close()
        if self._http is not None:
            await self._http.stop()
            self._http = None
        self._serving_since = None
        log.info("stopped")

    async def run(self, stop: asyncio.Event) -> None:
        """Start, serve until ``stop`` is set, then stop (also when start-up is interrupted)."""
        starting = asyncio.create_task(self.start())
        stopping = asyncio.create_task(stop.wait())
        try:
            await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if starting.done():
                starting.result()
                await stopping
            else:
                starting.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await starting
        finally:
            stopping.cancel()
            await self.stop()
