"""The report: ``RESULTS.md`` (tables, targets) and ``scale.png`` (log-log growth)."""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from genvbench.suite import CHANGING
from genvbench.tools import PEER, PROJECT_NVML, PROJECT_SMI

MB = 1000 * 1000
PROJECT_TOOLS = (PROJECT_NVML, PROJECT_SMI)
TOOLS = (PROJECT_NVML, PROJECT_SMI, PEER)
NVML_CHANGING = PROJECT_NVML + CHANGING
NVML_NET = "project (NVML), machine changing, without the NVML stand-in's own time"


# -- numbers ----------------------------------------------------------------------------------


def per_cycle(result: dict[str, Any], key: str = "cpu_s") -> float:
    return result[key] / result["cycles"] if result["cycles"] else math.nan


def med(values: Iterable[float]) -> float:
    values = list(values)
    return statistics.median(values) if values else math.nan


def ms(seconds: float) -> str:
    if math.isnan(seconds):
        return "–"
    return f"{seconds * 1000:.1f} ms" if seconds < 10 else f"{seconds:.1f} s"


def megabytes(kib: int) -> str:
    return f"{kib * 1024 / MB:.1f} MB"


def times(ratio: float) -> str:
    return "–" if math.isnan(ratio) or math.isinf(ratio) else f"{ratio:.1f}x"


def ratio(peer: float, ours: float) -> float:
    return peer / ours if ours > 0 else math.nan


def yes(met: bool) -> str:
    return "**yes**" if met else "**no**"


def exponent(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of log(cost) against log(size)."""
    xs = [math.log(x) for x, y in points if y > 0]
    ys = [math.log(y) for x, y in points if y > 0]
    if len(xs) < 2:
        return math.nan
    mean_x, mean_y = statistics.fmean(xs), statistics.fmean(ys)
    spread = sum((x - mean_x) ** 2 for x in xs)
    if spread == 0:
        return math.nan
    return sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True)) / spread


def scale_series(results: dict[str, Any]) -> dict[str, list[tuple[int, float]]]:
    """CPU seconds per cycle against E+P, per tool (and the project's net of the stand-in)."""
    series: dict[str, list[tuple[int, float]]] = {}
    for point in results.get("scale", []):
        size = point["envs"] + point["processes"]
        for name, result in point["tools"].items():
            series.setdefault(name, []).append((size, per_cycle(result)))
        if NVML_CHANGING in point["tools"]:
            net = per_cycle(point["tools"][NVML_CHANGING]) - point["standin_nvml_s"]
            series.setdefault(NVML_NET, []).append((size, net))
    return series


def peak_rss(results: dict[str, Any], tool: str) -> int:
    """The largest peak resident size (KiB) of ``tool``'s daemon in any measurement."""
    runs = list(results["daemon"][tool].values())
    for point in results.get("scale", []):
        runs += [result for name, result in point["tools"].items() if name.startswith(tool)]
    return max(run["peak_rss_kib"] for run in runs)


def point_at(results: dict[str, Any], envs: int, processes: int) -> dict[str, Any] | None:
    for point in results.get("scale", []):
        if point["envs"] == envs and point["processes"] == processes:
            return point
    return None


# -- tables -----------------------------------------------------------------------------------


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines + [""]


def machine_section(results: dict[str, Any]) -> list[str]:
    rows = [[key, value] for key, value in results["machine"].items()]
    rows += [[f"version: {name}", value] for name, value in results["versions"].items()]
    rows += [["project run as", f"`{results.get('project_genv', '?')}`"],
             ["genv 1.4.3 run from", f"`{results.get('peer_venv', '?')}`"]]
    if "duration_s" in results:
        rows.append(["benchmark duration", f"{results['duration_s'] / 60:.1f} minutes"])
    return ["## The machine it ran on", "", *table(["", ""], rows)]


def cpu_share(result: dict[str, Any]) -> float:
    """The daemon's CPU seconds per second of its window: the share of one core it takes."""
    return result["cpu_s"] / result["window_s"] if result["window_s"] else math.nan


def percent(share: float) -> str:
    return "–" if math.isnan(share) else f"{share * 100:.3f} %"


def peer_net(result: dict[str, Any]) -> float:
    """genv 1.4.3's CPU per cycle without its children: every child it starts is an
    ``nvidia-smi`` (the stand-in), directly or through a shell."""
    return per_cycle(result) - per_cycle(result, "children_cpu_s")


COMMANDS = ("genv devices", "genv envs", "genv envs activate")


def targets_section(results: dict[str, Any]) -> list[str]:
    daemon = results["daemon"]
    steady, changing = daemon[PROJECT_NVML]["steady"], daemon[PROJECT_NVML]["changing"]
    peer_steady = daemon[PEER]["steady"]
    ours, ours_changing = per_cycle(steady), per_cycle(changing)
    standin = results["standin_nvml_s"]
    net, net_changing = ours - standin, ours_changing - standin
    peer_cycle, peer_own = per_cycle(peer_steady), peer_net(peer_steady)
    rows = [
        ["a cycle where nothing changed, E=60 P=300: at most 0.5 ms of CPU (NVML path)",
         f"{ms(ours)} as measured; without the NVML stand-in's own {ms(standin)}: {ms(net)}",
         f"{yes(ours <= 0.0005)} as measured; {yes(net <= 0.0005)} without the stand-in"],
        ["… ≥ 30x below genv 1.4.3 (compiled nvidia-smi stand-in)",
         f"{times(ratio(peer_cycle, ours))}: {ms(ours)} vs {ms(peer_cycle)}, both with their "
         f"stand-ins; {times(ratio(peer_own, net))} without them ({ms(net)} vs "
         f"{ms(peer_own)}: genv 1.4.3 less its `nvidia-smi` children)",
         f"{yes(ratio(peer_cycle, ours) >= 30)} with; "
         f"{yes(ratio(peer_own, net) >= 30)} without"],
        ["a cycle where one process changed costs little more (≤ 1.5x the steady one)",
         f"{ms(ours_changing)} vs {ms(ours)} ({times(ratio(ours_changing, ours))}); without "
         f"the stand-in {ms(net_changing)} vs {ms(net)}",
         yes(ours_changing <= 1.5 * ours)],
    ]
    rows += _big_rows(results)
    share = cpu_share(steady)
    worst = max(steady["reactions_s"], default=math.nan)
    rows.append([
        "default `--interval` 1 s: a violation acted on within about a second, at ≤ 0.1 % "
        "of one core",
        f"slowest reaction {ms(worst)} (median {ms(med(steady['reactions_s']))}); the daemon "
        f"took {percent(share)} of one core over {steady['window_s']:.0f} s "
        f"(genv 1.4.3 at the same interval: {percent(cpu_share(peer_steady))})",
        yes(worst <= 1.5 and share <= 0.001)])
    wall = {name: med(results["one_cycle"][name]["wall_s"]) for name in TOOLS}
    rows.append([
        "`genv enforce --interval 0`: ≥ 2x faster than genv 1.4.3 end to end",
        f"NVML {times(ratio(wall[PEER], wall[PROJECT_NVML]))}, nvidia-smi "
        f"{times(ratio(wall[PEER], wall[PROJECT_SMI]))} "
        f"({ms(wall[PROJECT_NVML])}, {ms(wall[PROJECT_SMI])} vs {ms(wall[PEER])})",
        yes(ratio(wall[PEER], wall[PROJECT_NVML]) >= 2)])
    commands = results["commands"]
    shown, met = [], True
    for command in COMMANDS:
        theirs = med(commands[PEER][command]["wall_s"])
        mine = med(commands[PROJECT_NVML][command]["wall_s"])
        shown.append(f"`{command}` {times(ratio(theirs, mine))} ({ms(mine)} vs {ms(theirs)})")
        met = met and ratio(theirs, mine) >= 3
    rows.append(["`genv devices`, `genv envs`, `genv activate` (`genv envs activate`): ≥ 3x "
                 "faster than genv 1.4.3", "; ".join(shown), yes(met)])
    rows += _memory_rows(results)
    rows += _metrics_rows(results)
    rows += _growth_rows(results)
    return [
        "## Targets",
        "",
        "Each ratio is genv 1.4.3's number divided by the project's. \"With the stand-ins\": "
        "as measured, each tool charged for the simulated driver it calls; \"without\": the "
        "project's CPU less the NVML stand-in's own cost of the same calls (measured from C, "
        "`genvbench/nvml_cost.c`), genv 1.4.3's less its `nvidia-smi` children.",
        "",
        *table(["target", "measured", "met"], rows),
        *_standin_lines(results),
    ]


def _standin_lines(results: dict[str, Any]) -> list[str]:
    smi = results.get("standin_smi_s", {})
    nvml = results.get("standin_nvml", {})
    rows = [[f"`nvidia-smi {query}` (compiled stand-in), one call", ms(cost)]
            for query, cost in smi.items()]
    if nvml:
        rows.append(["NVML stand-in: the calls of one project cycle (8 GPUs)",
                     ms(nvml["pass_s"])])
        rows.append(["NVML stand-in, per call", ", ".join(
            f"{name} {value:.1f} µs" for name, value in nvml["per_call_us"].items())])
    if not rows:
        return []
    return ["The stand-ins' own CPU on this machine, beside the published cost of NVIDIA's "
            "real tools (one `nvidia-smi` query: 10–20 ms; one NVML query: about 0.1 ms):", "",
            *table(["", "CPU"], rows)]


def _memory_rows(results: dict[str, Any]) -> list[list[str]]:
    point = point_at(results, 1000, 5000)
    if point is None:
        return [["daemon resident memory under 40 MB at E=1000 P=5000",
                 "not measured (--quick)", "–"]]
    ours = max(point["tools"][name]["peak_rss_kib"] for name in (PROJECT_NVML, NVML_CHANGING))
    theirs = point["tools"][PEER]["peak_rss_kib"]
    return [["daemon resident memory under 40 MB at E=1000 P=5000",
             f"peak {megabytes(ours)} (NVML path, steady and changing; genv 1.4.3: "
             f"{megabytes(theirs)})", yes(ours * 1024 < 40 * MB)]]


def _metrics_rows(results: dict[str, Any]) -> list[list[str]]:
    rounds = results.get("metrics")
    if not rounds:
        return []
    off = med(r["cpu_per_cycle_s"] for r in rounds["off"])
    on = med(r["cpu_per_cycle_s"] for r in rounds["on"])
    extra = on / off - 1 if off else math.nan
    return [["daemon CPU with `--metrics-port` (scraped every 15 s) within 10 % of it without",
             f"{ms(on)} vs {ms(off)} per cycle: {extra * 100:+.1f} % (median of "
             f"{len(rounds['on'])} alternating rounds; bench/METRICS.md has more)",
             yes(extra <= 0.10)]]


def _big_rows(results: dict[str, Any]) -> list[list[str]]:
    point = point_at(results, 1000, 5000)
    if point is None:
        return [["E=1000, P=5000: at most 10 ms of CPU a cycle", "not measured (--quick)", "–"]]
    tools = point["tools"]
    standin = point["standin_nvml_s"]
    steady, changing = per_cycle(tools[PROJECT_NVML]), per_cycle(tools[NVML_CHANGING])
    peer = per_cycle(tools[PEER])
    return [[
        "E=1000, P=5000: at most 10 ms of CPU a cycle (NVML path)",
        f"{ms(steady)} ({ms(changing)} with one process changing every cycle), of which the "
        f"NVML stand-in itself: {ms(standin)}; the project's own: {ms(steady - standin)} "
        f"({ms(changing - standin)}); genv 1.4.3: {ms(peer)}",
        f"{yes(steady <= 0.01)} as measured; {yes(steady - standin <= 0.01)} without the "
        "stand-in",
    ]]


def _growth_rows(results: dict[str, Any]) -> list[list[str]]:
    series = scale_series(results)
    if not series:
        return []
    slopes = {name: exponent(points) for name, points in series.items()}
    ours = [slopes[name] for name in (*PROJECT_TOOLS, NVML_CHANGING, NVML_NET) if name in slopes]
    shown = ", ".join(f"{name} {slope:.2f}" for name, slope in slopes.items())
    return [["growth linear in P+E (log-log slope ≤ 1.1)", shown,
             yes(all(slope <= 1.1 for slope in ours))]]


def one_cycle_section(results: dict[str, Any]) -> list[str]:
    found = results["one_cycle"]
    peer_wall = med(found[PEER]["wall_s"])
    rows = []
    for name in TOOLS:
        wall = med(found[name]["wall_s"])
        rows.append([name, ms(wall), ms(min(found[name]["wall_s"])),
                     ms(med(found[name]["cpu_s"])), times(ratio(peer_wall, wall)),
                     "none" if not found[name]["output"] else "see below"])
    return [
        "## 1. One cycle: `genv enforce --interval 0 --non-env-processes`",
        "",
        f"Median of {len(found[PEER]['wall_s'])} runs, E=60, P=300: start-up, one cycle, exit. "
        "CPU includes every child (`wait4`).",
        "",
        *table(["tool", "wall (median)", "wall (best)", "CPU (median)",
                "genv 1.4.3 / tool", "findings"], rows),
    ]


def daemon_section(results: dict[str, Any]) -> list[str]:
    daemon = results["daemon"]
    peer = per_cycle(daemon[PEER]["steady"])
    peer_changing = per_cycle(daemon[PEER]["changing"])
    rows = []
    for name in TOOLS:
        steady, changing = daemon[name]["steady"], daemon[name]["changing"]
        rows.append([
            name, ms(per_cycle(steady)), ms(per_cycle(steady, "children_cpu_s")),
            str(steady["cycles"]), times(ratio(peer, per_cycle(steady))),
            ms(per_cycle(changing)), times(ratio(peer_changing, per_cycle(changing))),
            megabytes(steady["rss_kib"]), megabytes(steady["peak_rss_kib"]),
        ])
    standin = results["standin_nvml_s"]
    return [
        "## 2. The daemon: `genv enforce --interval 1 --non-env-processes`",
        "",
        f"CPU seconds per cycle over {results['settings']['daemon_window_s']:g} s (after three "
        "warm-up cycles), the daemon and every child it started; E=60, P=300. "
        "\"machine changing\": the description is rewritten twice a second with one process's "
        "memory going 100 MiB, 101 MiB, ... so that no two cycles see the same machine "
        f"({results['settings']['changing_window_s']:g} s window).",
        "",
        *table(["tool", "CPU / cycle", "of which children", "cycles", "genv 1.4.3 / tool",
                "CPU / cycle, machine changing", "genv 1.4.3 / tool", "resident", "peak resident"],
               rows),
        f"The NVML stand-in's own CPU time in one project cycle on this machine (measured by "
        f"`genvbench/nvml_cost.c`, the same driver calls from C): {ms(standin)}. Without it the "
        f"project's NVML cycle costs {ms(per_cycle(daemon[PROJECT_NVML]['steady']) - standin)} "
        f"({ms(per_cycle(daemon[PROJECT_NVML]['changing']) - standin)} with the machine "
        "changing).",
        "",
    ]


def scale_section(results: dict[str, Any]) -> list[str]:
    points = results.get("scale", [])
    if not points:
        return []
    names = list(points[0]["tools"])
    rows = []
    for point in points:
        row = [str(point["envs"]), str(point["processes"])]
        row += [ms(per_cycle(point["tools"][name])) for name in names]
        row += [ms(point["standin_nvml_s"]),
                times(ratio(per_cycle(point["tools"][PEER]),
                            per_cycle(point["tools"][PROJECT_NVML])))]
        rows.append(row)
    slopes = {name: exponent(found) for name, found in scale_series(results).items()}
    return [
        "## 3. Scale: CPU per daemon cycle",
        "",
        "Daemon at `--interval 1`, CPU per cycle (children included) after warm-up, for each "
        "E and P. The NVML stand-in column is its own share of the project's NVML cycle.",
        "",
        *table(["E", "P", *names, "NVML stand-in", "genv 1.4.3 / project (NVML)"], rows),
        "![CPU per cycle against E+P, log-log](scale.png)",
        "",
        "Growth, as the least-squares slope of log(CPU per cycle) against log(E+P) "
        "(1 = linear):",
        "",
        *table(["series", "slope"], [[name, f"{slope:.2f}"] for name, slope in slopes.items()]),
    ]


def reaction_section(results: dict[str, Any]) -> list[str]:
    rows = []
    for name in TOOLS:
        found = results["daemon"][name]["steady"]["reactions_s"]
        rows.append([name, ms(med(found)), ms(max(found, default=math.nan)),
                     ", ".join(ms(value) for value in found)])
    return [
        "## 4. Reaction at `--interval 1`",
        "",
        "A process of environment e0's user, claiming e0, appears on a device e0 is not "
        "attached to (env-devices); seconds until it is gone. Trials start at spread-out "
        "moments of the cycle.",
        "",
        *table(["tool", "median", "slowest", "all trials"], rows),
    ]


def commands_section(results: dict[str, Any]) -> list[str]:
    found = results["commands"]
    rows = []
    for command in COMMANDS:
        peer = med(found[PEER][command]["wall_s"])
        for name in TOOLS:
            wall = med(found[name][command]["wall_s"])
            rows.append([f"`{command}`", name, ms(wall), ms(med(found[name][command]["cpu_s"])),
                         times(ratio(peer, wall))])
    return [
        "## 5. Commands people wait on",
        "",
        f"Median wall time of a whole command, of {len(found[PEER]['genv devices']['wall_s'])} "
        "runs (E=60, P=300), run as root: the project lives "
        "in an interpreter under /root, which the simulated users cannot reach. "
        "`genv envs activate` registers a process in a new environment each time.",
        "",
        *table(["command", "tool", "wall (median)", "CPU (median)", "genv 1.4.3 / tool"], rows),
    ]


def findings_section(results: dict[str, Any]) -> list[str]:
    """Anything a tool printed where nothing was expected (it would be a bug)."""
    lines = []
    for name in TOOLS:
        output = results["one_cycle"][name]["output"]
        daemon = results["daemon"][name]["steady"]["unexpected_output"]
        for where, text in (("one cycle", output), ("daemon", daemon)):
            if text.strip():
                lines += [f"{name}, {where}:", "", "```", text.strip()[:1500], "```", ""]
    if not lines:
        return []
    return ["## Unexpected output", "", *lines]


def markdown(results: dict[str, Any], notes: str) -> str:
    sections = [
        ["# genv enforce: this project against genv 1.4.3", "",
         "Made by `python bench/run.py` (see bench/README.md). Every number comes from one "
         "run, both tools on the same simulated machine: 8 GPUs of 80 GB described once and "
         "read through stand-ins of `nvidia-smi` and `libnvidia-ml.so.1`; environments of "
         "4 real Linux users, each kept alive by a `sleep`; GPU processes that are real "
         "`sleep`s of those users, each holding 100 MiB on its environment's device. No "
         "rule is broken except where a measurement breaks one on purpose.", ""],
        machine_section(results),
        targets_section(results),
        one_cycle_section(results),
        daemon_section(results),
        scale_section(results),
        reaction_section(results),
        commands_section(results),
        findings_section(results),
        [notes.strip(), ""] if notes.strip() else [],
    ]
    return "\n".join(line for section in sections for line in section)


# -- the plot ---------------------------------------------------------------------------------


def plot(results: dict[str, Any], path: Path) -> None:
    """Two panels: CPU per cycle against E (one line per P) and against P (one per E), for
    the project (NVML) and genv 1.4.3; then the log-log growth against E+P."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = results.get("scale", [])
    series = scale_series(results)
    if not points or not series:
        return
    figure, (by_envs, by_processes, growth) = plt.subplots(1, 3, figsize=(16, 5))
    colours = {PEER: "tab:red", PROJECT_NVML: "tab:blue", PROJECT_SMI: "tab:green"}
    envs = sorted({p["envs"] for p in points})
    processes = sorted({p["processes"] for p in points})
    styles = ["-", "--", ":"]
    for name in (PROJECT_NVML, PEER):
        for style, fixed in zip(styles, processes, strict=False):
            row = sorted((p["envs"], per_cycle(p["tools"][name])) for p in points
                         if p["processes"] == fixed)
            by_envs.plot([x for x, _ in row], [y * 1000 for _, y in row], style, marker="o",
                         color=colours[name], label=f"{name}, P={fixed}")
        for style, fixed in zip(styles, envs, strict=False):
            row = sorted((p["processes"], per_cycle(p["tools"][name])) for p in points
                         if p["envs"] == fixed)
            by_processes.plot([x for x, _ in row], [y * 1000 for _, y in row], style,
                              marker="o", color=colours[name], label=f"{name}, E={fixed}")
    for axes, label in ((by_envs, "environments (E)"), (by_processes, "GPU processes (P)")):
        axes.set_xscale("log")
        axes.set_yscale("log")
        axes.set_xlabel(label)
        axes.set_ylabel("CPU per daemon cycle (ms), children included")
        axes.grid(True, which="both", alpha=0.3)
        axes.legend(fontsize=7)
    by_envs.set_title("against environments")
    by_processes.set_title("against GPU processes")
    markers = {PEER: "o", PROJECT_SMI: "s", PROJECT_NVML: "^", NVML_CHANGING: "v",
               NVML_NET: "x"}
    for name, found in series.items():
        slope = exponent(found)
        shown = growth.plot([x for x, _ in found], [y * 1000 for _, y in found],
                            markers.get(name, "."), linestyle="none",
                            label=f"{name} (slope {slope:.2f})")
        _fit_line(growth, found, slope, shown[0].get_color())
    growth.set_xscale("log")
    growth.set_yscale("log")
    growth.set_xlabel("environments + GPU processes (E + P)")
    growth.set_title("growth (least-squares slope)")
    growth.grid(True, which="both", alpha=0.3)
    growth.legend(fontsize=7)
    figure.suptitle("genv enforce: CPU of a cycle, this project against genv 1.4.3")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _fit_line(axes: Any, points: list[tuple[int, float]], slope: float, color: str) -> None:
    """The least-squares line of log(cost) on log(size), across the measured sizes."""
    kept = [(math.log(x), math.log(y)) for x, y in points if y > 0]
    if len(kept) < 2 or math.isnan(slope):
        return
    mean_x = statistics.fmean(x for x, _ in kept)
    mean_y = statistics.fmean(y for _, y in kept)
    ends = [min(x for x, _ in kept), max(x for x, _ in kept)]
    axes.plot([math.exp(x) for x in ends],
              [math.exp(mean_y + slope * (x - mean_x)) * 1000 for x in ends],
              color=color, linewidth=1, alpha=0.7)
