"""``genv top``'s screen, as rich renderables: devices with memory bars, users with their
environments and processes, the enforcer's latest actions, and the keys."""

from __future__ import annotations

import time

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from genv.domain.validate import safe_text
from genv.metrics.scrape import EnforcerStatus
from genv.metrics.source import HostSample
from genv.metrics.usage import DeviceUsage, EnvironmentUsage, HostUsage, ProcessUsage
from genv.top.model import ViewOptions, owner, unowned, user_rows, where

BAR_WIDTH = 24
USED, RESERVED, FREE = "█", "▒", "░"  # distinct without colour too (plain text, tmux)
MAX_ACTIONS = 6


def size(amount: int | None) -> str:
    """Bytes for people: ``512Mi``, ``7.1Gi``."""
    if amount is None:
        return "?"
    if amount < 1024**3:
        return f"{amount / 1024**2:.0f}Mi"
    return f"{amount / 1024**3:.1f}Gi"


def ago(moment: float | None, now: float) -> str:
    if moment is None:
        return "never"
    seconds = max(0, int(now - moment))
    if seconds < 120:
        return f"{seconds}s ago"
    if seconds < 7200:
        return f"{seconds // 60}m ago"
    return f"{seconds // 3600}h ago"


def memory_bar(device: DeviceUsage, width: int = BAR_WIDTH) -> Text:
    """Used, reserved by capacities (beyond what is used) and free, in ``width`` cells."""
    total = device.total_memory or 1
    used = min(device.used_memory or 0, total)
    reserved = max(min(device.reserved_memory, total) - used, 0)
    used_cells = round(width * used / total)
    reserved_cells = min(round(width * reserved / total), width - used_cells)
    free_cells = width - used_cells - reserved_cells
    bar = Text()
    bar.append(USED * used_cells, style="red")
    bar.append(RESERVED * reserved_cells, style="cyan")
    bar.append(FREE * free_cells, style="bright_black")
    return bar


def devices_table(usage: HostUsage) -> Table:
    table = Table(title="Devices", title_justify="left", expand=False, box=None, padding=(0, 1))
    for column, justify in (
        ("GPU", "right"),
        ("NAME", "left"),
        (f"MEMORY ({USED} used {RESERVED} reserved {FREE} free)", "left"),
        ("USED", "right"),
        ("RESERVED", "right"),
        ("TOTAL", "right"),
        ("ENVS", "right"),
        ("UTIL", "right"),
        ("TEMP", "right"),
    ):
        table.add_column(column, justify=justify, no_wrap=True)  # type: ignore[arg-type]
    for device in usage.devices:
        _add_row(
            table,
            str(device.index),
            safe_text(device.name, 24),
            memory_bar(device),
            size(device.used_memory),
            size(device.reserved_memory),
            size(device.total_memory),
            str(device.environments),
            "-" if device.utilization is None else f"{device.utilization}%",
            "-" if device.temperature is None else f"{device.temperature}C",
        )
    return table


def _add_row(table: Table, *cells: str | Text) -> None:
    """A row whose text cells are shown as they are: names come from users and processes,
    and rich would read ``[...]`` in them as markup (a crash, or a link in the viewer's
    terminal)."""
    table.add_row(*(Text(cell) if isinstance(cell, str) else cell for cell in cells))


def users_table(usage: HostUsage, options: ViewOptions) -> Table:
    table = Table(title="Users and environments", title_justify="left", box=None, padding=(0, 1))
    for column, justify in (
        ("USER / ENV", "left"),
        ("NAME", "left"),
        ("DEVICES", "left"),
        ("MEMORY USED / CAPACITY", "right"),
        ("PROCESSES", "left"),
    ):
        table.add_column(column, justify=justify, no_wrap=True)  # type: ignore[arg-type]
    rows = user_rows(usage, options)
    for row in rows:
        user = row.user
        problem = f" (state file {user.state_problem})" if user.state_problem else ""
        _add_row(
            table,
            Text(safe_text(user.username, 32) + problem, style="bold"),
            f"{user.environments} env(s)",
            f"{user.attached_devices} attached, {user.devices_in_use} in use",
            f"{size(user.memory_used)} / {size(user.memory_capacity)}",
            f"{user.processes} GPU process(es)",
        )
        for env_row in row.environments:
            env = env_row.env
            memory = Text(f"{size(env.used_memory)} / {size(env.capacity_memory)}")
            if over_capacity(env):
                memory = Text("over! ", style="bold red") + memory
            _add_row(
                table,
                "  " + safe_text(env.eid, 30),
                safe_text(env.name or "", 20),
                ",".join(str(i) for i in env.devices) or "-",
                memory,
                _pids(env_row.processes),
            )
        for process in row.outside:
            _add_row(
                table,
                Text(f"  pid {process.pid}", style="yellow"),
                safe_text(process.name, 20),
                ",".join(str(i) for i in process.devices),
                size(process.total_memory),
                where(process),
            )
    for process in unowned(usage):
        _add_row(
            table,
            Text(f"pid {process.pid}", style="yellow"),
            safe_text(process.name, 20),
            ",".join(str(i) for i in process.devices),
            size(process.total_memory),
            f"owner unknown ({owner(process)})",
        )
    if not rows:
        shown = f" of user {options.user}" if options.user else ""
        _add_row(
            table, Text(f"no environments or GPU processes{shown}", style="dim"), "", "", "", ""
        )
    return table


def over_capacity(env: EnvironmentUsage) -> bool:
    """Whether the environment holds more than it may on some device it is attached to."""
    capacity = dict(env.capacity)
    return any(index in capacity and used > capacity[index] for index, used in env.used)


def _pids(processes: tuple[ProcessUsage, ...]) -> str:
    if not processes:
        return "-"
    shown = ", ".join(f"{p.pid} ({size(p.total_memory)})" for p in processes[:4])
    return shown + (f" +{len(processes) - 4}" if len(processes) > 4 else "")


def enforcer_panel(status: EnforcerStatus, now: float) -> RenderableType:
    title = Text("Enforcer ", style="bold") + Text(status.url, style="dim")
    if status.error is not None:
        return Group(title, Text("  " + safe_text(status.error, 200), style="yellow"))
    violations = ", ".join(
        f"{safe_text(rule, 40)} {count}"
        for rule, count in sorted(status.violations.items())
        if count
    )
    lines = [
        title,
        Text(
            f"  last complete cycle {ago(status.last_cycle, now)}"
            + ("  (dry run)" if status.dry_run else "")
            + f"; violations now: {violations or 'none'}"
            + (f"; cycle errors: {status.cycle_errors}" if status.cycle_errors else "")
        ),
    ]
    if not status.actions:
        lines.append(Text("  no actions yet", style="dim"))
    for action in status.actions[:MAX_ACTIONS]:
        lines.append(
            Text(
                f"  {time.strftime('%H:%M:%S', time.localtime(action.time))}  "
                f"{safe_text(action.action, 16):<9} {safe_text(action.rule, 40):<21} "
                f"{safe_text(action.user, 24):<16} "
                f"x{action.count}"
            )
        )
    return Group(*lines)


def header(samples: list[HostSample], options: ViewOptions, now: float) -> Text:
    usages = [s.usage for s in samples if s.usage is not None]
    devices = sum(len(u.devices) for u in usages)
    envs = sum(len(u.environments) for u in usages)
    users = len({user.username for u in usages for user in u.users if user.environments})
    processes = sum(len(u.processes) for u in usages)
    line = Text("genv top", style="bold")
    line.append(f"  {time.strftime('%H:%M:%S', time.localtime(now))}  ")
    hosts = [s for s in samples if s.host is not None]
    if hosts:  # a cluster (genv remote top)
        line.append(f"{len(hosts)} host(s)")
        silent = sum(1 for s in hosts if s.usage is None)
        if silent:
            line.append(f" ({silent} not answering)", style="yellow")
        line.append(", ")
    line.append(
        f"{devices} device(s), {envs} environment(s), {users} user(s), {processes} GPU process(es)"
    )
    line.append(f"   sort: {options.sort}", style="cyan")
    if options.user is not None:
        line.append(f"  user: {safe_text(options.user, 32)}", style="cyan")
    return line


def footer(prompt: str | None) -> Text:
    if prompt is not None:
        return Text(f"user (Enter to show, Esc to cancel): {prompt}_", style="reverse")
    return Text("q quit  s sort  u show one user  a all users", style="dim")


def screen(
    samples: list[HostSample],
    options: ViewOptions,
    enforcer: EnforcerStatus | None,
    prompt: str | None = None,
    now: float | None = None,
) -> RenderableType:
    now = time.time() if now is None else now
    parts: list[RenderableType] = [header(samples, options, now)]
    for sample in samples:
        if sample.host is not None:
            parts.append(Text(f"\n{sample.host}", style="bold underline"))
        if sample.usage is None:
            said = sample.error or "no answer"
            if sample.host is not None:
                said = f"not answering: {said.removeprefix(sample.host + ': ')}"
            parts.append(Text(f"  {said}", style="yellow"))
            continue
        usage = sample.usage
        notes = [*usage.gpu_errors[:2], *(line for _, line in usage.problems[:3])]
        parts.append(Text(""))
        parts.append(devices_table(usage))
        parts.append(Text(""))
        parts.append(users_table(usage, options))
        for note in notes:
            parts.append(Text("  " + safe_text(note, 200), style="yellow"))
    if enforcer is not None:
        parts.append(Text(""))
        parts.append(enforcer_panel(enforcer, now))
    parts.append(Text(""))
    parts.append(footer(prompt))
    return Group(*parts)
