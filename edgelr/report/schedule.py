"""Scheduled regression runs: a crontab entry or a systemd service + timer from ``device_agents/templates``.

Both run ``edgelr regress --suite SUITE`` under ``flock -n LOCK`` (a run still going makes the next one
skip, so runs never overlap) and append its output to a new log file per run
(``<log_dir>/regress-<suite>-<UTC time>.log``). Nothing is installed: the files are written and the
commands that install them are printed.
"""

from __future__ import annotations

import os
import re
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from string import Template

from edgelr.errors import UsageError

DAYS = {"mon": ("1", "Mon"), "tue": ("2", "Tue"), "wed": ("3", "Wed"), "thu": ("4", "Thu"), "fri": ("5", "Fri"),
        "sat": ("6", "Sat"), "sun": ("0", "Sun")}


@dataclass(frozen=True)
class When:
    """A schedule: the five cron fields and the systemd OnCalendar expression of the same times."""

    cron: str
    on_calendar: str
    text: str


def parse_every(text: str) -> When:
    """``"daily 02:00"``, ``"hourly"``, ``"hourly :15"``, ``"weekly mon 03:30"`` -> :class:`When`."""
    t = " ".join(str(text).lower().split())
    hm = r"([01]?\d|2[0-3]):([0-5]\d)"
    if m := re.fullmatch(rf"daily {hm}", t):
        h, mi = int(m.group(1)), int(m.group(2))
        return When(f"{mi} {h} * * *", f"*-*-* {h:02d}:{mi:02d}:00", text)
    if m := re.fullmatch(r"hourly(?: :([0-5]\d))?", t):
        mi = int(m.group(1) or 0)
        return When(f"{mi} * * * *", f"*-*-* *:{mi:02d}:00", text)
    if m := re.fullmatch(rf"weekly (mon|tue|wed|thu|fri|sat|sun) {hm}", t):
        cron_day, sd_day = DAYS[m.group(1)]
        h, mi = int(m.group(2)), int(m.group(3))
        return When(f"{mi} {h} * * {cron_day}", f"{sd_day} *-*-* {h:02d}:{mi:02d}:00", text)
    raise UsageError(f"--every {text!r} is not understood; expected 'daily HH:MM', 'hourly', 'hourly :MM' or "
                     f"'weekly DAY HH:MM' (DAY mon..sun)")


def templates_dir() -> Path:
    """``device_agents/templates`` of this installation."""
    import device_agents

    return Path(device_agents.__file__).resolve().parent / "templates"


def regress_argv(suite: Path, inventory: str | None, baseline: str | None) -> list[str]:
    """The command a schedule runs (this Python, so cron's bare PATH does not matter)."""
    argv = [sys.executable, "-m", "edgelr.cli.main", "regress", "--suite", str(suite)]
    if inventory:
        argv += ["--inventory", str(Path(inventory).expanduser().resolve())]
    if baseline:
        argv += ["--baseline", baseline]
    return argv


def shell_command(suite_name: str, argv: list[str], lock: Path, log_dir: Path) -> str:
    """POSIX sh line: make the log dir, then run ``argv`` under ``flock -n`` into a new log file."""
    log = f'{shlex.quote(str(log_dir))}/regress-{suite_name}-"$(date -u +%Y%m%dT%H%M%SZ)".log'
    return (f"mkdir -p {shlex.quote(str(log_dir))} && flock -n {shlex.quote(str(lock))} "
            f"{shlex.join(argv)} >> {log} 2>&1")


def write_schedule(kind: str, suite_name: str, suite_path: Path, every: str, out_dir: Path, log_dir: Path,
                   lock: Path, inventory: str | None = None, baseline: str | None = None) -> list[Path]:
    """Write the cron file or the systemd unit pair into ``out_dir``; return the paths written."""
    when = parse_every(every)
    argv = regress_argv(suite_path, inventory, baseline)
    line = shell_command(suite_name, argv, lock, log_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    unit = f"edgelr-regress-{suite_name}"
    tdir = templates_dir()
    values = {"suite": suite_name, "every": when.text, "unit": unit}
    written: list[Path] = []
    if kind == "cron":
        text = Template((tdir / "edgelr-regress.cron").read_text()).substitute(
            values, cron_fields=when.cron, command=line.replace("%", r"\%"))
        written.append(_write(out_dir / f"{unit}.cron", text))
    elif kind == "systemd":
        exec_line = shlex.quote(line).replace("%", "%%").replace("$", "$$")
        written.append(_write(out_dir / f"{unit}.service", Template(
            (tdir / "edgelr-regress.service").read_text()).substitute(values, exec_line=exec_line)))
        written.append(_write(out_dir / f"{unit}.timer", Template(
            (tdir / "edgelr-regress.timer").read_text()).substitute(values, on_calendar=when.on_calendar)))
    else:
        raise UsageError(f"--install-schedule {kind!r}: expected cron or systemd")
    return written


def install_hint(kind: str, written: list[Path]) -> str:
    """The commands that activate what :func:`write_schedule` wrote (edgelr does not run them)."""
    if kind == "cron":
        return f"install with: (crontab -l 2>/dev/null; cat {shlex.quote(str(written[0]))}) | crontab -"
    timer = written[-1]
    return (f"install with: mkdir -p ~/.config/systemd/user && cp {shlex.quote(str(written[0]))} "
            f"{shlex.quote(str(timer))} ~/.config/systemd/user/ && systemctl --user daemon-reload && "
            f"systemctl --user enable --now {timer.name}")


def _write(path: Path, text: str) -> Path:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
    return path
