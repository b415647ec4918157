"""The measurements: one cycle, the daemon (CPU per cycle, memory, reaction), commands."""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from genvbench import procstat
from genvbench.host import fd_wait
from genvbench.machine import DEVICES, GpuProcess, Layout, Population, write_machine
from genvbench.tools import Tool

RULES = ("--non-env-processes",)  # plus the defaults of both: --env-devices, --env-memory
DAEMON_INTERVAL = 1
WARMUP_CYCLES = 3  # the project reads every process once, then watches it: steady after 2
REACTION_TIMEOUT_S = 15.0
NVML_COST_PASSES = 10
NVML_COST_PAUSE_MS = 200  # between passes: caches go cold, as between a daemon's cycles


@dataclass(frozen=True)
class Run:
    wall_s: float
    cpu_s: float
    stdout: str


@dataclass
class DaemonResult:
    cycles: int = 0
    window_s: float = 0.0
    cpu_s: float = 0.0
    children_cpu_s: float = 0.0
    rss_kib: int = 0
    peak_rss_kib: int = 0
    reactions_s: list[float] = field(default_factory=list)
    unexpected_output: str = ""


# -- one command, timed -----------------------------------------------------------------------


def timed(tool: Tool, *arguments: str, scratch: Path) -> Run:
    """Wall time and CPU time (children included: ``wait4``) of ``genv ARGUMENTS``."""
    out_path = scratch / "stdout.txt"
    with open(out_path, "w") as out, open(scratch / "stderr.txt", "w") as err:
        start = time.perf_counter()
        process = subprocess.Popen(tool.command(*arguments), env=tool.environment(),
                                   stdin=subprocess.DEVNULL, stdout=out, stderr=err)
        _, status, usage = os.wait4(process.pid, 0)
        wall = time.perf_counter() - start
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise RuntimeError(f"{tool.name}: genv {' '.join(arguments)} failed: "
                           f"{(scratch / 'stderr.txt').read_text()[-500:]}")
    cpu = usage.ru_utime + usage.ru_stime
    return Run(wall, cpu, out_path.read_text())


def one_cycle(tool: Tool, runs: int, scratch: Path) -> list[Run]:
    """``genv enforce --interval 0``: start, one cycle, exit; ``runs`` times after one that is
    not counted (it leaves the byte-code files an installed tool has)."""
    arguments = ("enforce", "--interval", "0", *RULES)
    timed(tool, *arguments, scratch=scratch)
    return [timed(tool, *arguments, scratch=scratch) for _ in range(runs)]


def commands(tool: Tool, layout: Layout, runs: int, scratch: Path) -> dict[str, list[Run]]:
    """What people wait on: ``genv devices``, ``genv envs`` and ``genv envs activate`` (a new
    environment of an existing user's process each time: what ``genv activate`` runs)."""
    env = layout.envs[0]
    timed(tool, "devices", scratch=scratch)  # not counted: byte-code files, as installed
    activate = [
        timed(tool, "envs", "activate", "--eid", f"act{index}", "--uid", str(env.user.uid),
              "--username", env.user.name, "--pid", str(env.keeper.pid), scratch=scratch)
        for index in range(runs)
    ]
    devices = [timed(tool, "devices", scratch=scratch) for _ in range(runs)]
    envs = [timed(tool, "envs", scratch=scratch) for _ in range(runs)]
    return {"genv devices": devices, "genv envs": envs, "genv envs activate": activate}


# -- the daemon -------------------------------------------------------------------------------


class Daemon:
    """``genv enforce --interval 1`` running in the background, watched from outside."""

    def __init__(self, tool: Tool, scratch: Path) -> None:
        self.tool = tool
        self.out_path = scratch / f"daemon-{_slug(tool.name)}.out"
        self._out = open(self.out_path, "w")  # noqa: SIM115 - closed in stop()
        self._err = open(scratch / f"daemon-{_slug(tool.name)}.err", "w")  # noqa: SIM115
        self.started = time.monotonic()
        self.process = subprocess.Popen(
            tool.command("enforce", "--interval", str(DAEMON_INTERVAL), *RULES),
            env=tool.environment(), stdin=subprocess.DEVNULL, stdout=self._out,
            stderr=self._err,
        )
        self.cycles = procstat.BurstCounter(self.process.pid)

    @property
    def pid(self) -> int:
        return self.process.pid

    def wait_cycles(self, count: int, since: float, timeout: float = 600.0) -> None:
        deadline = time.monotonic() + timeout
        while self.cycles.bursts(since) < count:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.tool.name}: the daemon exited "
                                   f"({self.process.returncode})")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.tool.name}: fewer than {count} cycles")
            time.sleep(0.05)

    def measure(self, window_s: float, min_cycles: int) -> DaemonResult:
        """CPU per cycle over at least ``window_s`` and ``min_cycles``, between idle points."""
        self.wait_cycles(WARMUP_CYCLES, self.started)
        first = procstat.idle_sample(self.pid)
        output_before = self.out_path.stat().st_size
        time.sleep(window_s)
        self.wait_cycles(min_cycles, first.when)
        last = procstat.idle_sample(self.pid)
        memory = procstat.memory_kib(self.pid)
        children = (last.child_ticks - first.child_ticks) / procstat.HZ
        result = DaemonResult(
            cycles=self.cycles.bursts(first.when, last.when),
            window_s=last.when - first.when,
            cpu_s=last.seconds_since(first),
            children_cpu_s=children,
            rss_kib=memory.get("VmRSS", 0),
            peak_rss_kib=memory.get("VmHWM", 0),
        )
        self._out.flush()
        with open(self.out_path) as out:
            out.seek(output_before)
            result.unexpected_output = out.read()[:2000]
        return result

    def stop(self) -> None:
        self.cycles.close()
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._out.close()
        self._err.close()


def reactions(
    population: Population, layout: Layout, machine: Path, trials: int
) -> list[float]:
    """Seconds from a rule breaker's appearance on a GPU until it is gone, ``trials`` times.

    The breaker is a new process of environment e0's user, claiming e0, on a device e0 is not
    attached to (the env-devices rule of both tools). Trials start at spread-out moments of
    the daemon's cycle.
    """
    env = layout.envs[0]
    times = []
    for trial in range(trials):
        time.sleep(0.3 + (trial * 0.37) % 1.0)
        breaker = population.spare(env)
        offender = GpuProcess(breaker, (env.device + 1) % DEVICES)
        write_machine(machine, layout, extra=(offender,))
        start = time.monotonic()
        gone = fd_wait(breaker.pid, REACTION_TIMEOUT_S)
        times.append(time.monotonic() - start if gone else float("inf"))
        population.pool.stop([breaker])
        write_machine(machine, layout)
    return times


def daemon(
    tool: Tool,
    scratch: Path,
    window_s: float,
    min_cycles: int,
    after: Callable[[DaemonResult], None] | None = None,
) -> DaemonResult:
    """Start the daemon, measure a window, run ``after(result)`` while it still runs, stop."""
    running = Daemon(tool, scratch)
    try:
        result = running.measure(window_s, min_cycles)
        if after is not None:
            after(result)
        return result
    finally:
        running.stop()


class Churn:
    """Rewrites the description twice a second, one process's memory going 100mi, 101mi,
    100mi...: every cycle sees a changed machine (no rule broken), as on a busy server."""

    PERIOD_S = 0.5

    def __init__(self, machine: Path, layout: Layout) -> None:
        self.machine = machine
        self.layout = layout
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Churn:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()
        write_machine(self.machine, self.layout)

    def _run(self) -> None:
        nudge = 0
        while not self._stop.wait(self.PERIOD_S):
            nudge = 1 - nudge
            write_machine(self.machine, self.layout, nudge=nudge)


# -- the NVML stand-in's own share --------------------------------------------------------------


def nvml_standin_cost(tool: Tool) -> dict[str, Any]:
    """The NVML stand-in's own CPU on the current machine: ``nvml_cost`` (built beside the
    stand-in from ``nvml_cost.c``) makes, from C, the driver calls one project cycle makes,
    each timed with the thread's CPU clock, with pauses between passes so that caches go cold
    as between a daemon's cycles. ``pass_s``: one cycle's worth; ``per_call_us``: by call."""
    program = Path(tool.env["LD_LIBRARY_PATH"]).parent / "nvml_cost"
    result = subprocess.run([str(program), str(NVML_COST_PASSES), str(NVML_COST_PAUSE_MS)],
                            env=tool.environment(), capture_output=True, text=True, check=True)
    found = json.loads(result.stdout)
    return {"pass_s": found["pass_us"] / 1e6, "per_call_us": found["per_call_us"],
            "calls_per_pass": found["calls_per_pass"]}


SMI_QUERIES = (  # the forms genv 1.4.3 runs each cycle, and the project's nvidia-smi path
    ("--query-gpu=uuid,index", "--format=csv"),
    ("--query-compute-apps=gpu_uuid,pid,used_memory", "--format=csv,noheader,nounits"),
)


def smi_standin_cost(tool: Tool, runs: int = 20) -> dict[str, float]:
    """CPU seconds of one call of the compiled ``nvidia-smi`` stand-in (``wait4``), per query
    form, median of ``runs``: what the stand-in itself costs a tool on each call."""
    costs = {}
    for query in SMI_QUERIES:
        found = []
        for _ in range(runs):
            process = subprocess.Popen(["nvidia-smi", *query], env=tool.environment(),
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            _, status, usage = os.wait4(process.pid, 0)
            if os.waitstatus_to_exitcode(status) != 0:
                raise RuntimeError(f"nvidia-smi {' '.join(query)} failed")
            found.append(usage.ru_utime + usage.ru_stime)
        costs[query[0]] = sorted(found)[len(found) // 2]
    return costs


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name).strip("-")
