"""The whole benchmark: set the machine up, measure every tool on it, collect the numbers."""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from genvbench import host, measure
from genvbench.machine import (
    Layout,
    Population,
    peer_documents,
    write_machine,
    write_peer_state,
    write_project_state,
)
from genvbench.tools import (
    PEER,
    PROJECT_NVML,
    Tool,
    build_nvml,
    log,
    make_tools,
    peer_venv,
    project_venv,
    versions,
)

USERS = 4
MAIN = (60, 300)  # E, P of the targets
CHANGING = " / machine changing"


@dataclass(frozen=True)
class Settings:
    runs: int  # one-shot cycles (median of 10 in a full run)
    command_runs: int  # each command people wait on (median of 20 in a full run)
    daemon_window_s: float
    changing_window_s: float
    reaction_trials: int
    scale_envs: tuple[int, ...]
    scale_processes: tuple[int, ...]
    scale_window_s: float
    scale_cycles: int
    metrics_rounds: int  # alternating rounds of the daemon without and with metrics
    metrics_window_s: float

    @classmethod
    def full(cls) -> Settings:
        # The daemon's window is longer than the store's LIVE_STATE_REUSE (30 s): what a
        # running daemon does every half minute falls inside it.
        return cls(10, 20, 40.0, 10.0, 5, (10, 100, 1000), (100, 1000, 5000), 5.0, 5, 3, 30.0)

    @classmethod
    def quick(cls) -> Settings:
        return cls(3, 3, 5.0, 3.0, 2, (10, 100), (100, 1000), 2.0, 2, 1, 5.0)


class Bench:
    """One run: the stand-ins, the peer, the users and processes, and the results so far."""

    def __init__(self, settings: Settings, out: Path) -> None:
        self.settings = settings
        self.out = out
        self.results: dict[str, Any] = {"settings": asdict(settings), "main": list(MAIN)}
        self.scratch = Path(tempfile.mkdtemp(prefix="genvbench-"))
        self.scratch.chmod(0o755)  # the simulated users' processes read nothing here, but
        self.machine = self.scratch / "machine.json"  # the stand-ins run as root anyway
        self.state = self.scratch / "state"
        self.state.mkdir()
        self.tools: list[Tool] = []
        self.population: Population | None = None

    # -- set-up ---------------------------------------------------------------------------

    def prepare(self) -> None:
        log("building the NVML stand-in with cc")
        nvml = build_nvml(self.out)
        log("installing genv 1.4.3 from PyPI into its own virtual environment")
        peer = peer_venv(self.out)
        log("installing this checkout into its own virtual environment")
        genv = project_venv(self.out)
        self.tools = make_tools(genv, nvml, peer, self.machine, self.state)
        self.results["machine"] = host.machine_facts()
        self.results["versions"] = versions(self.tools)
        self.results["peer_venv"] = str(peer)
        self.results["project_genv"] = " ".join(genv)

    def run(self) -> dict[str, Any]:
        self.prepare()
        most = max(self.settings.scale_processes) + max(self.settings.scale_envs)
        host.raise_limits(most + 100)
        pool = host.ProcessPool()
        with host.bench_users(USERS) as users:
            try:
                self.population = Population(pool, users)
                write_machine(self.machine, self.population.layout(1, 1))
                self.main_measurements()
                self.scale()
            finally:
                log("stopping every process and removing the users")
                pool.stop_all()
                shutil.rmtree(self.scratch, ignore_errors=True)
        return self.results

    def layout(self, envs: int, processes: int) -> Layout:
        assert self.population is not None
        log(f"machine: {envs} environments, {processes} GPU processes")
        layout = self.population.layout(envs, processes)
        write_machine(self.machine, layout)
        write_project_state(self.state / "project", layout, self.tool(PROJECT_NVML).python)
        write_peer_state(self.state / "peer", layout)
        return layout

    # -- E=60, P=300: one cycle, the daemon, reaction, commands ----------------------------

    def main_measurements(self) -> None:
        layout = self.layout(*MAIN)
        self.check_peer_state(layout)
        self.results["one_cycle"] = {}
        self.results["daemon"] = {}
        for tool in self.tools:
            log(f"{tool.name}: one cycle x{self.settings.runs}")
            runs = measure.one_cycle(tool, self.settings.runs, self.scratch)
            self.results["one_cycle"][tool.name] = _runs(runs)
        for tool in self.tools:
            self.results["daemon"][tool.name] = self.daemon_runs(tool, layout)
        standin = measure.nvml_standin_cost(self.tool(PROJECT_NVML))
        self.results["standin_nvml"] = standin
        self.results["standin_nvml_s"] = standin["pass_s"]
        self.results["standin_smi_s"] = measure.smi_standin_cost(self.tool(PEER))
        self.results["metrics"] = self.metrics_overhead()
        self.results["commands"] = {}
        for tool in self.tools:
            log(f"{tool.name}: commands x{self.settings.command_runs}")
            layout = self.layout(*MAIN)  # each tool starts from the same state
            found = measure.commands(tool, layout, self.settings.command_runs, self.scratch)
            self.results["commands"][tool.name] = {name: _runs(runs)
                                                   for name, runs in found.items()}

    def metrics_overhead(self) -> dict[str, Any]:
        """The project's daemon (NVML) with ``--metrics-port`` scraped every 15 s (Prometheus's
        default) against it without, in alternating rounds: CPU per cycle of each."""
        from metrics import daemon_cpu  # bench/metrics.py: the same measurement as there

        tool = self.tool(PROJECT_NVML)
        rounds: dict[str, list[dict[str, Any]]] = {"off": [], "on": []}
        for number in range(self.settings.metrics_rounds):
            for mode, scrape in (("off", None), ("on", 15.0)):
                log(f"{tool.name}: daemon, metrics {mode}, round {number + 1}")
                rounds[mode].append(daemon_cpu(tool, self.scratch,
                                               self.settings.metrics_window_s, scrape))
        return rounds

    def daemon_runs(self, tool: Tool, layout: Layout) -> dict[str, Any]:
        assert self.population is not None
        settings = self.settings
        log(f"{tool.name}: daemon, {settings.daemon_window_s:g} s, then reaction")

        def react(result: measure.DaemonResult) -> None:
            assert self.population is not None
            result.reactions_s = measure.reactions(self.population, layout, self.machine,
                                                   settings.reaction_trials)

        steady = measure.daemon(tool, self.scratch, settings.daemon_window_s,
                                3, after=react)
        log(f"{tool.name}: daemon, machine changing, {settings.changing_window_s:g} s")
        with measure.Churn(self.machine, layout):
            changing = measure.daemon(tool, self.scratch,
                                      settings.changing_window_s, 3)
        return {"steady": asdict(steady), "changing": asdict(changing)}

    def check_peer_state(self, layout: Layout) -> None:
        """Run genv 1.4.3's own commands once and check that the files written for it have
        the very shape of its own (so that it reads our machine as if it had made it)."""
        peer = next(tool for tool in self.tools if tool.is_peer)
        folder = self.scratch / "peer-format"
        env = layout.envs[0]
        environment = {**peer.environment(), "GENV_TMPDIR": str(folder)}
        for arguments in (
            ("envs", "activate", "--eid", "x", "--uid", str(env.user.uid), "--username",
             env.user.name, "--pid", str(env.keeper.pid)),
            ("envs", "config", "--eid", "x", "gpu-memory", "--gpu-memory", env.capacity),
            ("devices", "attach", "--eid", "x", "--count", "1"),
        ):
            subprocess.run(peer.command(*arguments), env=environment, check=True,
                           capture_output=True)
        envs, devices = peer_documents(layout)
        theirs_envs = json.loads((folder / "envs.json").read_text())
        theirs_devices = json.loads((folder / "devices.json").read_text())
        attached = next(d for d in theirs_devices["devices"] if d["attachments"])
        pairs = [
            (theirs_envs["envs"][0], envs["envs"][0]),
            (attached, devices["devices"][env.device]),
            (attached["attachments"][0], devices["devices"][env.device]["attachments"][0]),
        ]
        for theirs, ours in pairs:
            if _shape(theirs) != _shape(ours):
                raise RuntimeError(f"genv 1.4.3 state differs: {theirs} vs {ours}")
        self.results["peer_state_checked"] = True

    # -- scale ---------------------------------------------------------------------------------

    def scale(self) -> None:
        points = []
        for envs in self.settings.scale_envs:
            for processes in self.settings.scale_processes:
                layout = self.layout(envs, processes)
                point: dict[str, Any] = {"envs": envs, "processes": processes, "tools": {}}
                for tool in self.tools:
                    log(f"{tool.name}: cycle CPU at E={envs}, P={processes}")
                    point["tools"][tool.name] = self.scale_point(tool)
                    if tool.name == PROJECT_NVML:
                        with measure.Churn(self.machine, layout):
                            point["tools"][tool.name + CHANGING] = self.scale_point(tool)
                point["standin_nvml_s"] = measure.nvml_standin_cost(
                    self.tool(PROJECT_NVML))["pass_s"]
                points.append(point)
        self.results["scale"] = points

    def scale_point(self, tool: Tool) -> dict[str, Any]:
        result = measure.daemon(tool, self.scratch, self.settings.scale_window_s,
                                self.settings.scale_cycles)
        return asdict(result)

    def tool(self, name: str) -> Tool:
        return next(tool for tool in self.tools if tool.name == name)


def _runs(runs: list[measure.Run]) -> dict[str, Any]:
    return {
        "wall_s": [run.wall_s for run in runs],
        "cpu_s": [run.cpu_s for run in runs],
        "output": next((run.stdout for run in runs if run.stdout.strip()), "")[:2000],
    }


def _shape(value: Any) -> Any:
    """The keys and value types of a JSON document (None matches anything)."""
    if isinstance(value, dict):
        return {key: _shape(item) for key, item in sorted(value.items())}
    if isinstance(value, list):
        return "list"
    return type(value).__name__ if value is not None else None
