"""``edgelr devices list | check NAME``: the inventory and a health check of one device."""

from __future__ import annotations

import math
import shlex
from pathlib import Path
from typing import Any

import click

from edgelr.cli._common import echo_json, info, table

INVENTORY_HELP = ("Inventory TOML file (else $EDGELR_INVENTORY, else ~/.config/edgelr/inventory.toml). "
                  "A device `local` (this machine) always exists.")

EPILOG = """\b
Examples:
  edgelr devices list
  edgelr devices check pi4
  edgelr devices check local --json

\b
Inventory (~/.config/edgelr/inventory.toml):
  [devices.pi4]
  transport = "ssh"
  target = "rpi4"
  host = "192.168.1.40"
  user = "pi"
  key = "~/.ssh/id_ed25519"
"""


@click.group(epilog=EPILOG)
def devices() -> None:
    """List the devices of the inventory and check that one is ready to benchmark."""


@devices.command("list")
@click.option("--inventory", type=click.Path(dir_okay=False), help=INVENTORY_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def list_devices(inventory: str | None, as_json: bool) -> None:
    """List the inventory's devices (name, transport, target, address, benchmark program), and the places
    of the labgrid coordinators they use (state free/reserved/acquired, owner, tags)."""
    from device_agents.builtin import TRANSPORTS
    from device_agents.inventory import inventory_path, load_inventory

    devs = load_inventory(inventory)
    rows = []
    for d in devs.values():
        where = TRANSPORTS[d.transport].address(d)
        rows.append({"name": d.name, "transport": d.transport, "target": d.target, "os": d.os, "address": where,
                     "program": d.benchmark_binary or f"runner.py ({d.python})", "source": d.source})
    places: list[dict[str, Any]] = []
    if any(d.transport == "labgrid" for d in devs.values()):
        from device_agents.labgrid import lab_places

        places, errors = lab_places(devs.values())
        for err in errors:
            info(f"WARNING: {err}")
    if as_json:
        echo_json({"inventory": str(inventory_path(inventory)[0]), "devices": rows, "lab_places": places})
    else:
        click.echo(table(rows))
        if places:
            click.echo("\nlab places:")
            click.echo(table(places))


@devices.command("check")
@click.argument("name")
@click.option("--inventory", type=click.Path(dir_okay=False), help=INVENTORY_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option("--trust-new-host", is_flag=True, help="SSH: accept and remember an unknown host key.")
@click.option("--noise", is_flag=True, help="Also measure the device's between-session noise and the smallest "
              "change a comparison at the default sessions can detect; stored in the history.")
@click.option("--model", "noise_model", type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="Model for --noise [default: a small built-in CNN].")
@click.option("--sessions", type=click.IntRange(min=4), default=20, show_default=True,
              help="Interleaved blocks for --noise.")
@click.option("--history", envvar="EDGELR_HISTORY", type=click.Path(),
              help="Where --noise stores its result, a path or postgresql://... [env: EDGELR_HISTORY; "
                   "default: ~/.local/share/edgelr/history].")
def check(name: str, inventory: str | None, as_json: bool, trust_new_host: bool, noise: bool,
          noise_model: Path | None, sessions: int, history: str | None) -> None:
    """Check device NAME: reachable, OS/ABI, cores, governor, temperatures, power sensors, benchmark program.

    With --noise, the same model is measured as two names in interleaved blocks of sessions: the spread
    of the per-block log-ratios is the device's between-session noise, from which the smallest change a
    comparison of the default K sessions detects (alpha 0.01, power 95 %) follows.
    Exits 1 when the device cannot benchmark (unreachable, no ai-edge-litert and no benchmark_binary...).
    """
    from device_agents.inventory import get_device, open_transport
    from edgelr.errors import DeviceError

    spec = get_device(name, inventory)
    report: dict[str, Any] = {"device": spec.name, "transport": spec.transport, "target": spec.target,
                              "reachable": False, "ready": False, "problems": []}
    from device_agents.builtin import TRANSPORTS

    takes_trust = "trust_new_host" in TRANSPORTS[spec.transport].declared_options()   # ssh, labgrid
    overrides: dict[str, Any] = {"trust_new_host": True} if trust_new_host and takes_trust else {}
    try:
        transport = open_transport(spec, **overrides)
        try:
            _inspect_device(spec, transport, report)
        finally:
            transport.close()
    except DeviceError as exc:
        report["problems"].append(str(exc))
    report["ready"] = report["reachable"] and not report["problems"]
    if noise and report["ready"]:
        report["noise"] = _noise(spec, overrides, noise_model, sessions, history)
    if as_json:
        echo_json(report)
    else:
        _print_report(report)
        if "noise" in report:
            _print_noise(report["noise"])
    if not report["ready"]:
        raise SystemExit(1)


def _noise(spec: Any, overrides: dict[str, Any], model: Path | None, sessions: int, history: str | None
           ) -> dict[str, Any]:
    """Measure A/A interleaved blocks; return and store the noise floor."""
    import importlib.resources
    import math
    import shutil
    import tempfile

    import numpy as np

    from device_agents.inventory import open_transport
    from edgelr.bench.lock import device_lock
    from edgelr.bench.run import DEFAULT_RUNS, DEFAULT_SESSIONS, BenchModel, BenchSettings, benchmark
    from edgelr.report import history as H
    from edgelr.report.stats import DEFAULT_ALPHA, min_detectable_change, paired_sessions

    src = model or Path(str(importlib.resources.files("edgelr") / "data" / "noise_probe.tflite"))
    with tempfile.TemporaryDirectory(prefix="edgelr-noise-") as tmp:
        copy = Path(tmp) / f"copy-{src.name}"
        shutil.copyfile(src, copy)
        models = [BenchModel("A", src), BenchModel("A (copy)", copy)]
        settings = BenchSettings(sessions=sessions, runs=DEFAULT_RUNS)
        info(f"measuring noise on {spec.name}: {sessions} blocks of 2 sessions of {src.name}")
        with device_lock(spec.name, on_wait=info):
            transport = open_transport(spec, **overrides)
            try:
                frame = benchmark(spec, transport, models, settings, progress=info)
            finally:
                transport.close()
    b, a = paired_sessions(frame, "A (copy)", "A")
    d = np.log(b) - np.log(a)
    sd = float(d.std(ddof=1)) if d.size > 1 else math.nan
    med = np.concatenate([a, b])
    cv = float(1.4826 * np.median(np.abs(med - np.median(med))) / np.median(med))
    mdc = min_detectable_change(sd, DEFAULT_SESSIONS, DEFAULT_ALPHA)
    out = {"sessions": int(d.size), "runs": DEFAULT_RUNS, "median_ms": float(np.median(med)), "session_cv": cv,
           "sd_log_ratio": sd, "default_sessions": DEFAULT_SESSIONS, "alpha": DEFAULT_ALPHA,
           "min_detectable_change": mdc}
    hist = history or str(H.default_history())
    try:
        H.record_noise(hist, spec.name, sd_log_ratio=sd, session_cv=cv, sessions=int(d.size), runs=DEFAULT_RUNS,
                       alpha=DEFAULT_ALPHA, min_detectable=mdc, source=H.NOISE_FROM_CHECK)
        out["stored_in"] = H.describe(hist)   # a PostgreSQL URL with its password masked
    except Exception as exc:  # noqa: BLE001 - the measurement is still printed
        out["not_stored"] = str(exc)
    return out


def _inspect_device(spec: Any, transport: Any, report: dict[str, Any]) -> None:
    """Fill ``report`` with what `devices check` shows; problems go to ``report["problems"]``."""
    from device_agents import probes
    from edgelr.bench.harnesses import select_harness
    from edgelr.errors import BenchmarkError

    res = transport.run("uname -s -m; getprop ro.product.cpu.abi 2>/dev/null; getprop ro.build.version.release "
                        "2>/dev/null", timeout=spec.connect_timeout * 3)
    if res.exit_code != 0 and not res.stdout.strip():
        report["problems"].append(f"'uname' failed on the device (exit {res.exit_code}): {res.stderr.strip()[:200]}")
        return
    report["reachable"] = True
    lines = [ln.strip() for ln in res.stdout.splitlines() if ln.strip()]
    uname = lines[0].split() if lines else []
    report["os"] = uname[0] if uname else "unknown"
    report["arch"] = uname[1] if len(uname) > 1 else "unknown"
    report["abi"] = lines[1] if len(lines) > 1 else report["arch"]
    cpu = probes.read_cpu(transport)
    report["cores"] = cpu.cores
    report["governor"] = cpu.governor
    temps = probes.read_temperatures(transport)
    report["temperatures_c"] = temps
    thr = probes.read_throttled(transport)
    report["throttled"] = None if thr is None else {"raw": hex(thr.raw), "now": list(thr.now),
                                                    "since_boot": list(thr.since_boot)}
    meter = probes.find_energy_meter(transport)
    report["power_sensor"] = meter.probe.name if meter.probe else None
    report["power_note"] = meter.note
    report["taskset"] = transport.run("command -v taskset >/dev/null 2>&1 && echo yes",
                                      timeout=spec.connect_timeout * 3).stdout.strip() == "yes"
    if spec.os == "android":  # phone specifics (getprop, dumpsys thermalservice, battery, ODPM rails)
        from device_agents.android import android_device_info

        info_ = android_device_info(transport, spec.benchmark_binary, timeout=spec.connect_timeout * 6)
        report["android"] = info_
        if not temps and math.isfinite(float(info_.get("hottest_c", math.nan) or math.nan)):
            report["temperatures_c"] = {"dumpsys hottest": float(info_["hottest_c"])}
    try:
        harness = select_harness(spec)
        report["workdir"] = spec.remote_workdir
        transport.run(f"mkdir -p {shlex.quote(spec.remote_workdir)}", timeout=spec.connect_timeout * 3)
        prog = harness.prepare(transport, spec.remote_workdir, timeout=max(spec.connect_timeout * 6, 120.0))
        report["program"] = {"tool": prog.tool, "version": prog.version, "command": " ".join(prog.argv)}
    except BenchmarkError as exc:
        report["program"] = None
        report["problems"].append(str(exc))


def _print_noise(n: dict[str, Any]) -> None:
    click.echo(f"noise: session medians {n['median_ms']:.3f} ms, between-session CV {100 * n['session_cv']:.1f} %, "
               f"sd of block log-ratios {n['sd_log_ratio']:.3f} over {n['sessions']} blocks")
    mdc = n["min_detectable_change"]
    click.echo(f"smallest change detectable at {n['default_sessions']} sessions (alpha {n['alpha']:g}, power 95 %): "
               + (f"{100 * mdc:.1f} %" if mdc == mdc and mdc != float('inf') else "none (too few sessions)"))
    if "stored_in" in n:
        click.echo(f"stored in {n['stored_in']}")
    elif "not_stored" in n:
        click.echo(f"not stored: {n['not_stored']}")


def _print_report(r: dict[str, Any]) -> None:
    def line(key: str, value: Any) -> None:
        click.echo(f"{key:<15} {value}")

    line("device", f"{r['device']} ({r['transport']}, target {r['target']})")
    line("reachable", "yes" if r["reachable"] else "NO")
    if r["reachable"]:
        line("os / abi", f"{r.get('os')} {r.get('arch')} ({r.get('abi')})")
        line("cores", r.get("cores"))
        line("governor", r.get("governor"))
        temps = r.get("temperatures_c") or {}
        line("temperatures", ", ".join(f"{k} {v:.1f} C" for k, v in temps.items() if not math.isnan(v))
             or "no sensor")
        thr = r.get("throttled")
        line("throttling", "no vcgencmd" if thr is None else f"{thr['raw']} now: {', '.join(thr['now']) or 'ok'}; "
             f"since boot: {', '.join(thr['since_boot']) or 'ok'}")
        line("power sensor", r.get("power_sensor") or f"none ({r.get('power_note')})")
        line("taskset", "yes" if r.get("taskset") else "no (affinity masks not applied)")
        android = r.get("android")
        if android:
            line("android", f"{android.get('manufacturer', '')} {android.get('model', '')}, Android "
                 f"{android.get('android', '?')} (SDK {android.get('sdk', '?')}), SoC {android.get('soc', '?')}")
            line("thermal status", android.get("thermal_status", "unknown"))
            line("battery", android.get("battery", "unknown"))
            line("odpm rails", ", ".join(android.get("odpm_rails") or {}) or "none")
        prog = r.get("program")
        line("benchmark", f"{prog['tool']}: {prog['version']}" if prog else "NOT READY")
    for p in r["problems"]:
        info(f"problem: {p}")
    click.echo("ready" if r["ready"] else "NOT ready")
