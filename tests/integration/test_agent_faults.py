"""Faults around the agent found under test: each would come back without the fix.

- a socket that cannot be served again after a kubelet restart (a failed bind) is retried and
  never ends re-registration, and /readyz says NotReady meanwhile;
- two agents on one kubelet root: the second waits for the first's lock;
- a probe port in use, a bad --root, a squatted socket path, an unwritable CDI directory: one
  line and an exit code, never a traceback;
- SIGHUP applies a re-read config, and keeps the old one when the new one is bad;
- SIGTERM while NVML hangs ends the agent long before the hang would.

Waits are on conditions with generous limits; nothing here measures speed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
from agents import make_agent, wait_until

import gpulet
from gpulet import config
from gpulet.agent.agent import StartupError
from gpulet.agent.lock import lock_path
from gpulet.testing.kubelet import WAIT, AgentThread, KubeletStandin

pytestmark = pytest.mark.usefixtures("fake_library")

GPU = "nvidia.com/gpu"


# --- serving again after a failed bind -----------------------------------------------------


def test_a_failed_bind_during_a_kubelet_restart_is_retried(root: pathlib.Path) -> None:
    with gpulet.simulated("single-t4"), KubeletStandin(root) as kubelet:
        agent = make_agent(root)
        with AgentThread(agent) as thread:
            kubelet.wait_for_registrations([GPU])
            wait_until(lambda: agent.readiness.ready, "ready")
            socket_path = root / "device-plugins" / "gpulet-gpu.sock"

            def break_the_path() -> None:
                # On the agent's loop, so it cannot react in between: the socket goes (as when
                # a kubelet starts) and a directory takes its path, so binding it fails.
                socket_path.unlink()
                socket_path.mkdir()

            thread.run(break_the_path)
            kubelet.restart()
            wait_until(lambda: agent.stats.serve_failures >= 2, "failed binds, retried")
            r = agent.readiness
            assert not r.ready
            assert "not serving nvidia.com/gpu" in r.reason
            assert thread.run(lambda: any(not t.done() for t in agent._tasks))

            restarted = kubelet.starts
            thread.run(socket_path.rmdir)  # the path is usable again
            # The retry serves again and registers with the kubelet that started meanwhile,
            # and a later kubelet restart still leads to a registration.
            kubelet.wait_for_registrations([GPU], server_start=restarted)
            kubelet.restart()
            kubelet.wait_for_registrations([GPU], server_start=kubelet.starts)
            wait_until(lambda: agent.readiness.ready, "ready again")
            with kubelet.plugin(GPU) as p:
                assert len(p.devices()) == 1


def test_not_ready_until_registered(root: pathlib.Path) -> None:
    with gpulet.simulated("single-t4"):
        agent = make_agent(root)
        with AgentThread(agent):
            r = agent.readiness
            assert not r.ready
            assert "waiting for the kubelet" in r.reason
            with KubeletStandin(root) as kubelet:
                kubelet.wait_for_registrations([GPU])
                wait_until(lambda: agent.readiness.ready, "ready once registered")


# --- one agent per kubelet root --------------------------------------------------------------


def test_a_second_agent_waits_for_the_first(root: pathlib.Path) -> None:
    with gpulet.simulated("single-t4"), KubeletStandin(root) as kubelet:
        first = make_agent(root)
        second = make_agent(root)
        with AgentThread(first):
            kubelet.wait_for_registrations([GPU])
            socket_path = root / "device-plugins" / "gpulet-gpu.sock"
            identity = socket_path.stat().st_ino
            count = len(kubelet.registrations)
            thread = AgentThread(second)
            thread._thread.start()
            thread._started = True
            starting = asyncio.run_coroutine_threadsafe(second.start(), thread.loop)
            try:
                wait_until(lambda: second._lock_waiting is not None, "the second agent waiting")
                r = second.readiness
                assert not r.ready
                assert "agent lock" in r.reason
                assert str(lock_path(root)) in r.reason
                assert f"pid {os.getpid()}" in r.reason
                # The first agent's socket and registration are untouched.
                assert socket_path.stat().st_ino == identity
                assert len(kubelet.registrations) == count
            except BaseException:
                starting.cancel()
                thread.stop()
                raise
        # The first agent stopped: the second takes over, serves and registers.
        try:
            starting.result(WAIT)
            kubelet.wait_until(lambda: len(kubelet.registrations) > count)
            wait_until(lambda: second.readiness.ready, "the second agent ready")
        finally:
            thread.stop()


def test_a_second_agent_with_no_wait_exits_with_one_line(root: pathlib.Path) -> None:
    with (
        gpulet.simulated("single-t4"),
        KubeletStandin(root) as kubelet,
        AgentThread(make_agent(root)),
    ):
        kubelet.wait_for_registrations([GPU])
        second = make_agent(root, lock_wait=0.0)
        thread = AgentThread(second)
        with pytest.raises(StartupError, match="another gpulet agent serves this kubelet"):
            thread.start()
        thread.stop()


# --- start-up errors: one line, no traceback -------------------------------------------------


def simulate(
    env: dict[str, str], root: pathlib.Path | str, *extra: str
) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "gpulet", "simulate", "--spec", "single-t4"]
    command += ["--root", str(root), *extra]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)


def one_line(result: subprocess.CompletedProcess[str], code: int, needle: str) -> None:
    assert result.returncode == code, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("gpulet: "), result.stderr
    assert needle in last, result.stderr


@pytest.fixture
def cli_env() -> Iterator[dict[str, str]]:
    with gpulet.simulated("single-t4") as s:
        yield {**s.env, "PYTHONPATH": os.pathsep.join(sys.path), "GPULET_LOG_LEVEL": "WARNING"}


def test_a_probe_port_in_use_is_a_start_up_error(
    root: pathlib.Path, cli_env: dict[str, str]
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = simulate(cli_env, root, "--metrics-port", str(port), "--bind-address", "127.0.0.1")
    one_line(result, 1, f"cannot serve /healthz and /readyz on 127.0.0.1:{port}")
    assert not list((root / "device-plugins").glob("*.sock"))


def test_a_bad_bind_address_is_refused(root: pathlib.Path, cli_env: dict[str, str]) -> None:
    one_line(simulate(cli_env, root, "--bind-address", "localhost:80"), 2, "--bind-address")


@pytest.mark.parametrize("kind", ["file", "proc"])
def test_a_bad_root_is_one_line(root: pathlib.Path, cli_env: dict[str, str], kind: str) -> None:
    if kind == "file":
        bad = root / "a-file"
        bad.write_text("x")
    else:
        bad = pathlib.Path("/proc/gpulet-test-root")
    one_line(simulate(cli_env, bad, "--metrics-port", "0"), 2, f"--root {bad}")


def test_a_file_squatting_the_socket_path_is_one_line(
    root: pathlib.Path, cli_env: dict[str, str]
) -> None:
    squatter = root / "device-plugins" / "gpulet-gpu.sock"
    squatter.parent.mkdir()
    squatter.write_text("not a socket")
    one_line(simulate(cli_env, root, "--metrics-port", "0"), 1, str(squatter))
    assert squatter.read_text() == "not a socket"  # not removed


def test_an_unwritable_cdi_directory_is_one_line(
    root: pathlib.Path, cli_env: dict[str, str]
) -> None:
    (root / "cdi").write_text("a file where the CDI directory goes")
    # gpulet simulate's default device-list strategy includes cdi-cri, which needs the spec.
    one_line(simulate(cli_env, root, "--metrics-port", "0"), 1, "CDI spec")


# --- SIGHUP ------------------------------------------------------------------------------------


def _timeslicing(replicas: object) -> str:
    return (
        "version: v1\nsharing:\n  timeSlicing:\n    resources:\n"
        f"    - name: nvidia.com/gpu\n      replicas: {replicas}\n"
    )


def test_sighup_applies_a_new_config_and_keeps_the_old_one_when_bad(root: pathlib.Path) -> None:
    config_file = root / "config.yaml"
    config_file.write_text(_timeslicing(2))
    log = root / "agent.log"
    with gpulet.simulated("dgx-h100") as s, KubeletStandin(root) as kubelet:
        env = {**s.env, "PYTHONPATH": os.pathsep.join(sys.path)}
        command = [sys.executable, "-m", "gpulet", "simulate", "--spec", "dgx-h100"]
        command += ["--root", str(root), "--config", str(config_file), "--metrics-port", "0"]
        with log.open("w") as out:
            proc = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            kubelet.wait_for_registrations([GPU], timeout=60)
            with kubelet.plugin(GPU) as p:
                assert len(p.devices()) == 16
            count = len(kubelet.registrations)

            config_file.write_text(_timeslicing(4))
            proc.send_signal(signal.SIGHUP)
            kubelet.wait_until(lambda: len(kubelet.registrations) > count)
            with kubelet.plugin(GPU) as p:
                wait_until(lambda: len(p.devices()) == 32, "the new device list")
            count = len(kubelet.registrations)

            config_file.write_text(_timeslicing('"four"'))
            proc.send_signal(signal.SIGHUP)
            wait_until(lambda: "refused" in log.read_text(), "the refusal logged")
            assert "replicas" in log.read_text()
            assert proc.poll() is None
            with kubelet.plugin(GPU) as p:
                assert len(p.devices()) == 32  # the previous config is still served
            assert len(kubelet.registrations) == count

            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=WAIT) == 0
        finally:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait()


# --- SIGTERM while NVML hangs ------------------------------------------------------------------


def test_sigterm_during_a_hung_nvml_init_ends_the_agent(root: pathlib.Path) -> None:
    hang = 120.0
    with gpulet.simulated("single-t4") as s:
        s.control.delay("nvmlInit", hang)
        env = {**s.env, "PYTHONPATH": os.pathsep.join(sys.path)}
        # `gpulet run` on the fake library: the agent itself is the first to call NVML.
        command = [sys.executable, "-m", "gpulet", "run", "--kubelet-root", str(root)]
        command += ["--cdi-root", str(root / "cdi"), "--metrics-port", "0"]
        log = root / "agent.log"
        with log.open("w") as out:
            proc = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            # The agent is up and waiting in nvmlInit once it has taken its lock.
            wait_until(lambda: lock_path(root).exists(), "the agent started")
            started = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            # Far less than the hang: the agent does not wait for NVML to return.
            assert proc.wait(timeout=hang / 4) == 0, log.read_text()
            print(f"SIGTERM during a hung nvmlInit: exited in {time.monotonic() - started:.2f}s")
        finally:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait()
            s.control.clear_faults()


def test_a_reload_naming_a_gpu_the_node_lacks_changes_nothing(root: pathlib.Path) -> None:
    ts = {"timeSlicing": {"resources": [{"name": GPU, "replicas": 2}]}}
    with gpulet.simulated("dgx-h100"), KubeletStandin(root) as kubelet:
        agent = make_agent(root, {"sharing": ts})
        with AgentThread(agent) as thread:
            kubelet.wait_for_registrations([GPU])
            count = len(kubelet.registrations)
            bad = config.parse(
                {
                    "version": "v1",
                    "sharing": ts,
                    "gpulet": {
                        "kubeletRoot": str(root),
                        "metricsPort": 0,
                        "gpuReplicas": [{"devices": [9], "replicas": 3}],
                    },
                }
            )
            assert thread.call(agent.reload(bad)) is False
            assert agent.last_reload_error is not None
            assert "gpulet.gpuReplicas[0].devices[0]" in agent.last_reload_error
            assert agent.stats.reload_failures == 1
            # The old config is still served, on the same registration.
            assert len(kubelet.registrations) == count
            with kubelet.plugin(GPU) as p:
                assert len(p.devices()) == 16
            assert agent.readiness.ready


def test_the_lock_file_removed_while_held_is_not_ready(root: pathlib.Path) -> None:
    with gpulet.simulated("single-t4"), KubeletStandin(root) as kubelet:
        agent = make_agent(root)
        with AgentThread(agent):
            kubelet.wait_for_registrations([GPU])
            wait_until(lambda: agent.readiness.ready, "ready")
            lock_path(root).unlink()  # an operator cleaning the directory
            r = agent.readiness
            assert not r.ready
            assert "was removed while held" in r.reason
