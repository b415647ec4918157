"""``CLUSTER.md`` (the table, targets, the extrapolation) and ``cluster.png``."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from genvbench.cluster import PEER, PROJECT
from genvbench.tools import log


def _ms(seconds: float) -> str:
    if seconds is None or math.isnan(seconds):
        return "–"
    return f"{seconds * 1000:.1f} ms" if seconds < 10 else f"{seconds:.1f} s"


def _row(results: dict[str, Any], tool: str, size: int) -> dict[str, Any] | None:
    return results["runs"].get(f"{tool}|{size}")


def fit(points: list[tuple[int, float]]) -> tuple[float, float]:
    """Least squares of cost = a + b * hosts."""
    n = len(points)
    if n < 2:
        return (points[0][1] if points else math.nan), 0.0
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    b = sum((x - mx) * (y - my) for x, y in points) / sxx if sxx else 0.0
    return my - b * mx, b


def markdown(results: dict[str, Any]) -> str:
    sizes = results["sizes"]
    lines = ["# Cluster benchmark: `genv remote enforce` against genv 1.4.3", "",
             "Written by `bench/cluster.py` (see bench/README.md, \"The cluster\"). Each host: "
             "its own sshd on 127.0.0.x, 8 GPUs, 4 environments, 8 GPU processes; both tools "
             "with `--non-env-processes --max-devices-per-user 1000`. CPU is the controller "
             "(with its ssh clients) plus every host's side (sshd, sudo, genv, nvidia-smi), "
             "all on this machine.", "",
             "## One cluster cycle", "",
             "| hosts | tool | daemon cycle: wall | daemon cycle: CPU (controller + hosts) | "
             "one-shot `--interval 0`: wall | one-shot: CPU |",
             "| --- | --- | --- | --- | --- | --- |"]
    for size in sizes:
        for tool in (PROJECT, PEER):
            row = _row(results, tool, size)
            if row is None:
                continue
            d, o = row["daemon"], row["one_shot"]
            lines.append(
                f"| {size} | {tool} | {_ms(d['wall_s'])} | {_ms(d['cpu_s'])} "
                f"({_ms(d['controller_s'])} + {_ms(d['hosts_s'])}) | {_ms(o['wall_s'])} | "
                f"{_ms(o['cpu_s'])} |")
    lines += ["", "## Targets at the largest size", ""]
    top = max(sizes)
    mine, peer = _row(results, PROJECT, top), _row(results, PEER, top)
    if mine and peer:
        ratio = peer["daemon"]["cpu_s"] / mine["daemon"]["cpu_s"]
        lines += [
            "| target | measured | met |", "| --- | --- | --- |",
            f"| {top} hosts: a daemon cycle under 1 s of wall time | "
            f"{_ms(mine['daemon']['wall_s'])} (slowest of the window "
            f"{_ms(mine['daemon']['wall_max_s'])}); genv 1.4.3: {_ms(peer['daemon']['wall_s'])}"
            f" | {'yes' if mine['daemon']['wall_s'] < 1 else 'no'} |",
            f"| {top} hosts: ≥ 10× less CPU per cycle than genv 1.4.3 | "
            f"{_ms(mine['daemon']['cpu_s'])} vs {_ms(peer['daemon']['cpu_s'])}: "
            f"{ratio:.0f}× | {'yes' if ratio >= 10 else 'no'} |",
        ]
    lines += ["", "## Growth and 1,000 hosts", "",
              "Least squares of cost = a + b × hosts over the measured sizes, and what it "
              "gives for 1,000 hosts (all hosts' CPU counted, as here):", "",
              "| tool | CPU per cycle | at 1,000 hosts | wall per cycle | at 1,000 hosts |",
              "| --- | --- | --- | --- | --- |"]
    for tool in (PROJECT, PEER):
        cpu = [(s, _row(results, tool, s)["daemon"]["cpu_s"]) for s in sizes
               if _row(results, tool, s)]
        wall = [(s, _row(results, tool, s)["daemon"]["wall_s"]) for s in sizes
                if _row(results, tool, s)]
        ca, cb = fit(cpu)
        wa, wb = fit(wall)
        lines.append(f"| {tool} | {_ms(ca)} + {_ms(cb)} × hosts | {_ms(ca + cb * 1000)} | "
                     f"{_ms(wa)} + {_ms(wb)} × hosts | {_ms(wa + wb * 1000)} |")
    lines += ["", "![wall and CPU of one cycle against hosts](cluster.png)", "",
              "## The machine", "", "| | |", "| --- | --- |"]
    lines += [f"| {k} | {v} |" for k, v in results["machine"].items()]
    return "\n".join(lines) + "\n"


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = results["sizes"]
    figure, (wall_axes, cpu_axes) = plt.subplots(1, 2, figsize=(11, 4.5))
    for tool, marker, color in ((PROJECT, "^", "tab:blue"), (PEER, "o", "tab:red")):
        rows = [(s, _row(results, tool, s)) for s in sizes if _row(results, tool, s)]
        xs = [s for s, _ in rows]
        wall_axes.plot(xs, [r["daemon"]["wall_s"] for _, r in rows], marker=marker, color=color,
                       label=f"{tool}, daemon cycle")
        wall_axes.plot(xs, [r["one_shot"]["wall_s"] for _, r in rows], marker=marker, color=color,
                       linestyle="--", label=f"{tool}, one-shot (--interval 0)")
        cpu_axes.plot(xs, [r["daemon"]["cpu_s"] for _, r in rows], marker=marker, color=color,
                      label=f"{tool}, daemon cycle")
        cpu_axes.plot(xs, [r["one_shot"]["cpu_s"] for _, r in rows], marker=marker, color=color,
                      linestyle="--", label=f"{tool}, one-shot")
    for axes, label in ((wall_axes, "wall time of one cycle (s)"),
                        (cpu_axes, "CPU of one cycle, controller + hosts (s)")):
        axes.set_xscale("log")
        axes.set_yscale("log")
        axes.set_xlabel("simulated hosts")
        axes.set_ylabel(label)
        axes.set_xticks(sizes)
        axes.set_xticklabels([str(s) for s in sizes])
        axes.grid(True, which="both", alpha=0.3)
        axes.legend(fontsize=7)
    wall_axes.axhline(1.0, color="grey", linewidth=0.8, linestyle=":")
    figure.suptitle("genv remote enforce: one cluster cycle against the number of hosts")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def write(results: dict[str, Any], folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "CLUSTER.md").write_text(markdown(results))
    plot(results, folder / "cluster.png")
    log(f"wrote {folder / 'CLUSTER.md'} and {folder / 'cluster.png'}")
