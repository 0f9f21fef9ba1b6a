"""The agent process: NVML, state, CDI, the device-plugin servers, and the kubelet.

Start-up, in the order docs/architecture.md explains: take the agent lock of the kubelet root
(a second agent on the same root waits, NotReady, until the first one exits); wait for NVML
(NotReady with the reason meanwhile, or exit under ``failOnInitError``); build the node
inventory (``gpulet.inventory``: devices, the device plugin / DRA split, health), the resources
to advertise and the device plugin's state (topology prepared once); (checkpoint: later)
reconcile with PodResources; write the CDI spec; serve one gRPC server per resource; register
each with the kubelet.

Then the agent lives on events, not polling: an inotify watch on the device-plugins directory
re-registers every resource as soon as the kubelet's ``kubelet.sock`` is created again (a
kubelet restart), and restarts a server whose socket was removed (a starting kubelet removes
them all). A server that cannot be served again (say the directory is briefly not writable)
and a failed registration are retried with backoff; meanwhile ``/readyz`` says NotReady and
why. PodResources is reconciled shortly after each Allocate and at an interval. SIGHUP
(:meth:`Agent.reload`) applies a re-read config, or keeps the old one when the new one is bad.
On stop every server stops and its socket is removed, within a bounded time whatever NVML does.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pathlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import gpulet
from gpulet import alloc, cdi
from gpulet._core import Node
from gpulet.agent.http import ProbeServer
from gpulet.agent.inotify import DirEvent, DirWatcher
from gpulet.agent.lock import AgentLock, lock_path
from gpulet.alloc import Ledger
from gpulet.config import Config
from gpulet.deviceplugin.podresources import PodResourcesClient, PodResourcesError
from gpulet.deviceplugin.registration import RegistrationError, register
from gpulet.deviceplugin.resources import ResourceSet, ResourceSpec, build_resources
from gpulet.deviceplugin.responses import ResponseSettings
from gpulet.deviceplugin.server import PluginServer
from gpulet.deviceplugin.state import DevicePluginState, ReconcileReport
from gpulet.errors import GpuletError
from gpulet.inventory import NodeInventory
from gpulet.readiness import NvmlProbe, Readiness

__all__ = ["DEFAULT_CDI_ROOT", "Agent", "AgentOptions", "StartupError"]

T = TypeVar("T")

log = logging.getLogger("gpulet.agent")

DEFAULT_CDI_ROOT = "/var/run/cdi"
_CDI_STRATEGIES = {"cdi-annotations", "cdi-cri"}
#: Backoff of serving again and registering again: first delay, cap.
_RETRY_FIRST, _RETRY_CAP = 0.05, 30.0


class StartupError(GpuletError):
    """The agent cannot start: a port in use, a directory it cannot write, a squatted path."""


async def off_loop(fn: Callable[[], T], name: str = "gpulet-nvml") -> T:
    """Run ``fn`` in a daemon thread and await its result.

    Unlike ``asyncio.to_thread``, the thread is not joined when the loop shuts down: an NVML
    call that hangs (``nvmlInit`` on a wedged driver) cannot hold the process past SIGTERM.
    Cancelling the await abandons the thread; its result is dropped.
    """
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(ok: bool, value: Any) -> None:
        if future.done():
            return
        if ok:
            future.set_result(value)
        else:
            future.set_exception(value)

    def run() -> None:
        try:
            result: Any = fn()
            ok = True
        except BaseException as e:
            result, ok = e, False
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
            loop.call_soon_threadsafe(settle, ok, result)

    threading.Thread(target=run, name=name, daemon=True).start()
    return await future


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
    #: The address the probe endpoint binds (``0.0.0.0``: every interface, so that the kubelet
    #: and Prometheus reach it on the node's address under ``hostNetwork``).
    http_host: str = "0.0.0.0"
    #: The agent lock (one agent per kubelet root); ``None``: no lock.
    lock_path: pathlib.Path | None = None
    #: Seconds to wait for another agent's lock before giving up (``None``: wait for ever).
    lock_wait: float | None = None
    #: Seconds stop() waits for the health monitor (a hung NVML call is abandoned after it).
    stop_timeout: float = 5.0

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
            "lock_path": lock_path(root),
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
    serve_failures: int = 0
    reloads: int = 0
    reload_failures: int = 0
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
        self.node_inventory: NodeInventory | None = None
        self.state: DevicePluginState | None = None
        self.resources: ResourceSet | None = None
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
        self._lock = AgentLock(self.options.lock_path) if self.options.lock_path else None
        self._lock_waiting: str | None = None
        self._serve_errors: dict[str, str] = {}
        self._retry: asyncio.Event | None = None
        #: Why the last SIGHUP's config was refused (``None``: the last one was applied).
        self.last_reload_error: str | None = None
        self.registered = asyncio.Event()

    # --- readiness ---------------------------------------------------------------------

    @property
    def readiness(self) -> Readiness:
        """Ready only while every resource is served and registered with the current kubelet;
        otherwise NotReady with the reason (NVML missing, waiting for another agent's lock, a
        socket that cannot be served, a registration not done yet)."""
        now = time.monotonic()
        if self._lock_waiting is not None:
            return Readiness(False, self._lock_waiting, now)
        probe = self._probe.readiness
        if not probe.ready:
            return probe
        if self._serving_since is None or self.resources is None:
            return Readiness(False, "starting the device-plugin servers", probe.since)
        if self._lock is not None and not self._lock.still_held():
            return Readiness(
                False,
                f"the agent lock {self._lock.path} was removed while held: another agent may "
                "serve this kubelet root",
                now,
            )
        down = [n for n, server in self.servers.items() if not server.serving]
        if down:
            why = "; ".join(f"{n}: {self._serve_errors.get(n, 'starting')}" for n in down)
            return Readiness(False, f"not serving {why} (retrying)", now)
        unregistered = [
            n for n, reg in self._registrations.items() if reg.generation != self._generation
        ]
        if unregistered:
            where = (
                "registering with the kubelet"
                if self.options.kubelet_socket.exists()
                else f"waiting for the kubelet ({self.options.kubelet_socket} is not there)"
            )
            return Readiness(False, f"{where}: {', '.join(unregistered)} not registered", now)
        names = ", ".join(f"{r.name} ({len(r.devices)})" for r in self.resources.resources)
        return Readiness(True, f"serving {names or 'no resources'}", self._serving_since)

    @property
    def http_port(self) -> int | None:
        return self._http.port if self._http is not None else None

    # --- start-up ----------------------------------------------------------------------

    async def _take_lock(self) -> None:
        """Take the agent lock, waiting (NotReady) while another agent holds it."""
        lock = self._lock
        if lock is None:
            return
        started = time.monotonic()
        next_log = started
        try:
            while not lock.try_acquire():
                now = time.monotonic()
                self._lock_waiting = (
                    f"waiting for the agent lock {lock.path}, held by {lock.holder()}: another "
                    "gpulet agent serves this kubelet root"
                )
                wait = self.options.lock_wait
                if wait is not None and now - started >= wait:
                    raise StartupError(
                        f"another gpulet agent serves this kubelet root: {lock.path} is locked "
                        f"by {lock.holder()}; stop it first"
                    )
                if now >= next_log:
                    log.warning("NotReady: %s (waiting until it exits)", self._lock_waiting)
                    next_log = now + 60.0
                await asyncio.sleep(0.2)
        except GpuletError as e:
            raise StartupError(str(e)) from None
        finally:
            self._lock_waiting = None
        log.info("holding the agent lock %s", lock.path)

    async def _wait_for_nvml(self) -> Node:
        while True:
            node = await off_loop(self._probe.poll)
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
        self._retry = asyncio.Event()
        # The lock first: a second agent waiting for it binds nothing (its probes fail, which
        # is the truth: it does not serve).
        await self._take_lock()
        if self.options.http_port is not None:
            host, port = self.options.http_host, self.options.http_port
            http = ProbeServer(lambda: self.readiness, host, port)
            try:
                await http.start()
            except OSError as e:
                raise StartupError(
                    f"cannot serve /healthz and /readyz on {host}:{port}: {e.strerror or e}; "
                    "another process uses the port, or the address is not this node's "
                    "(choose others with --metrics-port and --bind-address)"
                ) from None
            self._http = http

        node = await self._wait_for_nvml()
        self.node = node
        node_inventory = NodeInventory(node, self.config)
        resources = build_resources(node, self.config)
        for note in resources.notes:
            log.warning("%s", note)
        state = DevicePluginState(node_inventory, self.config, resources, self._ledger)
        state.on_stale = self._allocated
        self.node_inventory = node_inventory
        if any(r.whole_gpus and r.devices for r in resources.resources):
            await asyncio.to_thread(alloc.prepare, node.topology)
        self.resources, self.state = resources, state
        log.info(
            "advertising %s",
            ", ".join(f"{n}: {c}" for n, c in resources.counts().items()) or "nothing",
        )

        # (The checkpoint comes here once there is one.) Then PodResources.
        await self.reconcile()
        if self.options.cdi_root is not None:
            await self._write_cdi()
        await self._start_health(node, node_inventory)

        plugin_dir = self.options.plugin_dir
        try:
            plugin_dir.mkdir(parents=True, exist_ok=True)
            self._watcher = DirWatcher(plugin_dir)
            self._watcher.start()  # before looking at the directory: no event is missed
        except (OSError, GpuletError) as e:
            raise StartupError(
                f"cannot watch the kubelet's device-plugins directory {plugin_dir}: "
                f"{getattr(e, 'strerror', None) or e}"
            ) from None
        settings = self._settings(self.config)
        for r in resources.resources:
            await self._add_server(state, r, settings, initial=True)
        self._serving_since = time.monotonic()
        if self.options.kubelet_socket.exists():
            self._generation += 1
        self._tasks.append(asyncio.create_task(self._watch_loop(), name="gpulet-watch"))
        self._tasks.append(asyncio.create_task(self._reconcile_loop(), name="gpulet-reconcile"))
        self._tasks.append(asyncio.create_task(self._retry_loop(), name="gpulet-retry"))
        await self._resync()

    def _settings(self, config: Config) -> ResponseSettings:
        return ResponseSettings.from_config(
            config, cdi.read_mig_minors(self.options.driver_root or "/")
        )

    async def _add_server(
        self,
        state: DevicePluginState,
        r: ResourceSpec,
        settings: ResponseSettings,
        *,
        initial: bool,
    ) -> None:
        """Make and start the server of resource ``r``. At start-up a failure is fatal (one
        line, the kubelet restarts the container); later it is retried with backoff."""
        server = PluginServer(
            state, r, self.options.plugin_dir, settings, on_allocate=self._allocated
        )
        self.servers[r.name] = server
        self._registrations[r.name] = _Registration()
        try:
            await server.start()
        except (GpuletError, OSError, RuntimeError) as e:
            if initial:
                raise StartupError(f"cannot serve {r.name} on {server.path}: {e}") from None
            self._serve_failed(r.name, e)

    async def _write_cdi(self) -> None:
        assert self.node is not None
        node, o = self.node, self.options
        served = self.resources.served if self.resources is not None else None

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
        except (OSError, GpuletError) as e:
            why = (
                f"cannot write the CDI spec under {o.cdi_root}: {getattr(e, 'strerror', None) or e}"
            )
            if set(self.config.flags.plugin.device_list_strategy) & _CDI_STRATEGIES:
                raise StartupError(f"{why} (the device list strategy needs it)") from None
            log.warning("no CDI spec: %s", why)

    async def _start_health(self, node: Node, inventory: NodeInventory) -> None:
        if self._health_factory is None:
            return

        def on_change(device_id: str, healthy: bool, reason: str) -> None:
            # From any of the monitor's threads (never two at once). Health belongs to the node
            # inventory, which every path reads and a SIGHUP reload keeps.
            inventory.set_health(device_id, healthy, reason)

        try:
            monitor = self._health_factory(node, on_change)
            # start() makes the NVML event watcher, which a wedged driver can hold up: off the
            # loop, in a daemon thread.
            await off_loop(monitor.start, "gpulet-health-start")
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
            event = await watcher.get()
            try:
                self._take_events(event)
                # Serve again first; a starting kubelet removes the sockets just before it
                # creates kubelet.sock, so look for that event once more before registering (one
                # registration per restart, with the new kubelet).
                await self._resync(register=False)
                await asyncio.sleep(0)
                self._take_events()
                await self._resync()
            except Exception:  # this loop must outlive any one failure
                log.exception("handling a change in %s failed; retrying", watcher.path)
                self._kick_retry()

    def _serve_failed(self, name: str, error: BaseException) -> None:
        self.stats.serve_failures += 1
        self._serve_errors[name] = str(error)
        log.warning("cannot serve %s: %s (retrying with backoff)", name, error)
        self._kick_retry()

    def _kick_retry(self) -> None:
        if self._retry is not None:
            self._retry.set()

    async def _retry_loop(self) -> None:
        """Serve again and register again after a failure, with capped exponential backoff."""
        retry = self._retry
        assert retry is not None
        delay = _RETRY_FIRST
        while True:
            await retry.wait()
            await asyncio.sleep(delay)
            retry.clear()
            try:
                ok = await self._resync()
            except Exception:
                log.exception("serving again failed")
                ok = False
            delay = _RETRY_FIRST if ok else min(delay * 2, _RETRY_CAP)
            if not ok:
                retry.set()

    async def _resync(self, *, register: bool = True) -> bool:
        """Serve every resource on a present socket, and register each one that is not
        registered with the current kubelet. False when a server could not be served (a retry
        is scheduled)."""
        assert self._resync_lock is not None
        ok = True
        async with self._resync_lock:
            if self._stopping:
                return True
            for name, server in self.servers.items():
                if not server.socket_present():
                    if server.serving:
                        log.info("the socket of %s is gone: serving it again", name)
                    # A registration still running names the socket that is gone: it must
                    # not count for the new one.
                    reg = self._registrations[name]
                    reg.generation = -1
                    if reg.task is not None and not reg.task.done():
                        reg.task.cancel()
                    reg.task, reg.task_generation = None, -1
                    try:
                        await server.start()
                    except (GpuletError, OSError, RuntimeError) as e:
                        self._serve_failed(name, e)
                        ok = False
                        continue
                    if self._serve_errors.pop(name, None) is not None:
                        log.info("serving %s again", name)
                    self.stats.server_restarts += 1
            if not register or not self.options.kubelet_socket.exists():
                return ok
            for name, server in self.servers.items():
                if server.serving:
                    self._ensure_registration(name)
        return ok

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
        """Restart every server and register again, with the same config."""
        assert self._resync_lock is not None
        async with self._resync_lock:
            for name, server in self.servers.items():
                try:
                    await server.start()
                except (GpuletError, OSError, RuntimeError) as e:
                    self._serve_failed(name, e)
            self._generation += 1
        await self._resync()

    async def reload(self, config: Config) -> bool:
        """Apply a re-read config (SIGHUP, as NVIDIA's config manager expects).

        The new config is validated against the node first; a bad one changes nothing (the old
        config keeps being served, and the reason is logged and kept in
        :attr:`last_reload_error`). A good one replaces the servers: every resource is served
        and registered again with the new device lists, and PodResources re-attributes what
        the kubelet has assigned. The kubelet root and the probe port take effect on restart.
        """
        node, old, node_inventory = self.node, self.state, self.node_inventory
        if node is None or old is None or node_inventory is None or self._resync_lock is None:
            log.warning("config reload ignored: the agent has not started serving yet")
            return False
        try:
            resources = build_resources(node, config)
            settings = self._settings(config)
        except GpuletError as e:
            self.stats.reload_failures += 1
            self.last_reload_error = str(e)
            log.error("the re-read config is refused, still serving the previous one: %s", e)
            return False
        for what, before, after in (
            ("kubeletRoot", self.config.gpulet.kubelet_root, config.gpulet.kubelet_root),
            ("metricsPort", self.config.gpulet.metrics_port, config.gpulet.metrics_port),
        ):
            if before != after:
                log.warning("gpulet.%s changed to %s: it takes effect on restart", what, after)
        for note in resources.notes:
            log.warning("%s", note)
        async with self._resync_lock:
            for server in self.servers.values():
                await server.stop()
            old.detach()
            node_inventory.resplit(config)
            state = DevicePluginState(node_inventory, config, resources, old.ledger)
            state.on_stale = self._allocated
            self.config, self.resources, self.state = config, resources, state
            for reg in self._registrations.values():
                if reg.task is not None:
                    reg.task.cancel()
            self.servers, self._registrations, self._serve_errors = {}, {}, {}
            for r in resources.resources:
                await self._add_server(state, r, settings, initial=False)
            self._generation += 1
            self.registered.clear()
        if any(r.whole_gpus and r.devices for r in resources.resources):
            await asyncio.to_thread(alloc.prepare, node.topology)
        await self.reconcile()
        if self.options.cdi_root is not None:
            try:
                await self._write_cdi()
            except StartupError as e:
                log.error("%s", e)
        await self._resync()
        self.stats.reloads += 1
        self.last_reload_error = None
        log.info(
            "config reloaded: advertising %s",
            ", ".join(f"{n}: {c}" for n, c in resources.counts().items()) or "nothing",
        )
        return True

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
            try:
                await asyncio.wait_for(
                    off_loop(monitor.stop, "gpulet-health-stop"), self.options.stop_timeout
                )
            except asyncio.TimeoutError:
                log.warning(
                    "the health monitor did not stop within %.0fs (an NVML call hangs); leaving it",
                    self.options.stop_timeout,
                )
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
        if self._lock is not None:
            self._lock.release()
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
