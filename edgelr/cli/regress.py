"""``edgelr regress``: run a regression suite on devices, store the results, compare with a baseline."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from edgelr.cli._common import echo_json, info, table
from edgelr.report.suite_format import SUITE_FORMAT

if TYPE_CHECKING:
    import pandas as pd

    from edgelr.report.suite import Suite

EPILOG = """\b
Examples:
  edgelr regress --suite suite.toml
  edgelr regress --suite suite.toml --baseline window:10 --json
  edgelr regress --suite suite.toml --accept            # the current run becomes the baseline
  edgelr regress --suite suite.toml --install-schedule cron --every "daily 02:00" --schedule-dir ~/sched

\b
Suite file (TOML):
{suite_format}
\b
Latency is compared between sessions: the current run's session medians against the baseline's
(Mann-Whitney U). A suggested change is then confirmed by re-measuring the baseline's stored model and
the current one interleaved on the same device (Wilcoxon signed-rank over blocks); that paired verdict
decides, and the `evidence` column says so (--no-confirm skips it). A regression needs both: one-sided
p < alpha and an effect whose 95 % interval reaches the threshold. Metrics without sessions (memory,
energy, accuracy) are compared by threshold only. Baseline `last`: the last run accepted with --accept (the
first run of a history is accepted automatically), else the previous run.
Exit codes: 0 no regression, 3 regression found, 1 error (a device down; the other devices still run
and are stored). A regression outranks a device error.
""".replace("{suite_format}", SUITE_FORMAT.rstrip().replace("\n\n", "\n\n\b\n"))


@click.command(epilog=EPILOG)
@click.option("--suite", "suite_file", required=True, type=click.Path(dir_okay=False), help="Suite TOML file.")
@click.option("--inventory", type=click.Path(dir_okay=False), help="Inventory TOML (else $EDGELR_INVENTORY, "
              "else ~/.config/edgelr/inventory.toml).")
@click.option("--baseline", default=None, help="last | NAME | window:N  [default: the suite's, else last]")
@click.option("--accept", is_flag=True, help="Record this run as the new baseline (exit 0 despite regressions).")
@click.option("--accept-as", "accept_as", default=None, metavar="NAME",
              help="Record this run as the baseline called NAME (compare later with --baseline NAME).")
@click.option("--alpha", type=float, default=None, help="Significance level [default: the suite's, else 0.01].")
@click.option("--history", "history_override", type=click.Path(),
              help="History store, a path or postgresql://... (overrides the suite's).")
@click.option("--json", "as_json", is_flag=True, help="Print the verdicts as JSON on stdout.")
@click.option("--confirm/--no-confirm", default=True, show_default=True,
              help="Confirm a suggested change by re-measuring the baseline's model and the current one "
                   "interleaved (paired re-run).")
@click.option("--install-schedule", type=click.Choice(["cron", "systemd"]),
              help="Write a crontab entry or a systemd service+timer that runs this suite; run nothing now.")
@click.option("--every", default="daily 02:00", show_default=True,
              help="When scheduled runs happen: 'daily HH:MM', 'hourly', 'weekly DAY HH:MM'.")
@click.option("--schedule-dir", type=click.Path(file_okay=False),
              help="Where to write the schedule files [default: ~/.config/edgelr/schedule].")
@click.option("--log-dir", type=click.Path(file_okay=False),
              help="Where scheduled runs write one log each [default: <history>/logs].")
def regress(suite_file: str, inventory: str | None, baseline: str | None, accept: bool, accept_as: str | None,
            alpha: float | None,
            history_override: str | None, as_json: bool, confirm: bool, install_schedule: str | None, every: str,
            schedule_dir: str | None, log_dir: str | None) -> None:
    """Run a regression suite: benchmark its models on its devices, store and compare with a baseline."""
    from edgelr.report.history import locate
    from edgelr.report.suite import load_suite

    suite = load_suite(suite_file)
    history = locate(history_override) if history_override else suite.history
    if install_schedule:
        _install(suite, install_schedule, every, schedule_dir, log_dir, history, inventory, baseline)
        return
    run_suite(suite, history, inventory=inventory, baseline=baseline or suite.baseline,
              alpha=suite.alpha if alpha is None else alpha, accept=accept, accept_as=accept_as, as_json=as_json,
              confirm=suite.confirm and confirm)


def _install(suite: "Suite", kind: str, every: str, schedule_dir: str | None, log_dir: str | None, history: Path,
             inventory: str | None, baseline: str | None) -> None:
    from edgelr.report.history import files_root
    from edgelr.report.schedule import install_hint, write_schedule

    out = Path(schedule_dir).expanduser() if schedule_dir else Path.home() / ".config" / "edgelr" / "schedule"
    store_dir = files_root(history)
    logs = Path(log_dir).expanduser().resolve() if log_dir else store_dir / "logs"
    lock = store_dir / f"regress-{suite.name}.lock"
    written = write_schedule(kind, suite.name, suite.path, every, out.resolve(), logs, lock, inventory, baseline)
    for p in written:
        click.echo(str(p))
    info(f"logs of each run: {logs}/regress-{suite.name}-<UTC time>.log; overlap lock: {lock}")
    info(install_hint(kind, written))


def run_suite(suite: "Suite", history: Path, *, inventory: str | None, baseline: str, alpha: float, accept: bool,
              as_json: bool, accept_as: str | None = None, confirm: bool = True) -> None:
    """Run the suite through :func:`edgelr.regress.run_suite` and print; raise RegressionFound (3) or
    DeviceError (1) at the end."""
    from edgelr.errors import DeviceError, RegressionFound
    from edgelr.regress import pct as _pct, run_suite as run
    from edgelr.report import history as H

    res = run(suite, history, inventory=inventory, baseline=baseline, alpha=alpha, accept=accept,
              accept_as=accept_as, confirm=confirm, progress=info)
    comps, run_id, errors = res.comparisons, res.run_id, res.errors
    regressions = res.regressions
    for w in res.warnings:
        info(f"warning: {w}")
    if as_json:
        echo_json({"run_id": run_id, "suite": suite.name, "history": H.describe(history),
                   "baseline": baseline, "alpha": alpha, "accepted": accept or res.auto_accepted,
                   "errors": errors, "regressions": int(len(regressions)), "noise": res.noise,
                   "comparisons": comps.astype(object).where(comps.notna(), None).to_dict("records")})
    else:
        click.echo(table(_rows(comps), ["model", "device", "metric", "baseline", "baseline_value", "current",
                                        "change", "ci", "threshold", "p", "n", "status", "evidence"]))
        for dev, n in res.noise.items():
            mdc = n["min_detectable_change"]
            conf = n.get("min_detectable_change_confirmed")
            click.echo(f"noise on {dev}: session CV {n['session_cv']:.1%}; smallest latency change detectable "
                       f"(alpha {n['alpha']:g}, power 95 %): {_pct(mdc)} at {n['sessions']} sessions"
                       + (f", {_pct(conf)} with a {n['confirm_blocks']}-block paired re-run" if conf is not None else "")
                       + f" (noise from {n['source']})")
        thr_only = comps["method"].str.startswith("threshold-only") & ~comps["status"].isin(["not-measured"])
        for note in sorted(set(comps.loc[thr_only, "metric"])):
            info(f"note: {note} compared by threshold only (no sessions or too few); no p-value")
        for _, r in regressions.iterrows():
            if r["change_run"]:
                info(f"{r['model']} on {r['device']}: {r['metric']} step change began at run {r['change_run']}")
    if res.auto_accepted:
        info(f"no accepted baseline yet: run {run_id} accepted as the baseline (use --accept to move it)")
    elif accept:
        info(f"run {run_id} accepted as the baseline")
    if accept_as:
        info(f"run {run_id} recorded as baseline {accept_as!r} (compare with --baseline {accept_as})")
    if len(regressions) and not (accept or accept_as):
        what = ", ".join(f"{r.model}/{r.device}/{r.metric} {_change(r)}" for r in regressions.itertuples())
        raise RegressionFound(f"{len(regressions)} regression(s) in run {run_id}: {what}"
                              + (f"; device errors: {'; '.join(errors.values())}" if errors else ""))
    if errors:
        raise DeviceError(f"regress {suite.name}: {len(errors)} device(s) failed ({'; '.join(f'{d}: {e}' for d, e in errors.items())}); "
                          f"results of the others stored in run {run_id}")


def _change(r: Any) -> str:
    e = r.effect
    if e is None or (isinstance(e, float) and not math.isfinite(e)):
        return ""
    return f"{e:+.1%}" if str(r.threshold).endswith("%") else f"{e:+.3g}"


def _rows(comps: "pd.DataFrame") -> list[dict[str, Any]]:
    out = []
    for r in comps.itertuples():
        rel = str(r.threshold).endswith("%")
        ci = ""
        if isinstance(r.ci_low, float) and math.isfinite(r.ci_low):
            ci = f"[{r.ci_low:+.1%}, {r.ci_high:+.1%}]" if rel else f"[{r.ci_low:+.3g}, {r.ci_high:+.3g}]"
        method = str(r.method)
        evidence = ("paired re-run" if "paired re-run" in method else "stored baseline (sessions)"
                    if "sessions" in method else "threshold only" if method.startswith("threshold") else method)
        out.append({"model": r.model, "device": r.device, "metric": r.metric, "threshold": r.threshold,
                    "evidence": evidence,
                    "baseline": str(r.baseline).split(":")[0], "baseline_value": r.baseline_value,
                    "current": r.current, "change": _change(r), "ci": ci,
                    "p": f"{r.p_value:.2g}" if isinstance(r.p_value, float) and math.isfinite(r.p_value) else "",
                    "n": f"{r.n_current}/{r.n_baseline}", "status": r.status.upper() if r.status == "regression"
                    else r.status, "method": r.method})
    return out
