"""Benchmark processes on the device: started in their own process group, never left running.

What a benchmark run left behind is what made earlier measurements wrong (a ``--num_runs 1000000``
runner still going after Ctrl-C, a lost SSH link or ``kill -9`` of edgelr). The rules, kept by the
on-device wrapper :data:`RUNWRAP_SH` (POSIX sh: dash, busybox ash, Android's mksh) and the transports:

* The benchmark program runs in its own session and process group (``setsid``), so stopping the group
  stops its children too, and no signal to the wrapper's group reaches it by accident.
* A guard process in the program's group stops the group when the wrapper disappears (even after
  ``kill -9`` of the wrapper, which no trap sees).
* While it runs, a pid file ``<workdir>/run/bench.<wrapper pid>.pid`` holds ``pgid=P wrapper=W
  start=T`` (``T``: the program's start time in clock ticks since boot, field 22 of ``/proc/P/stat``);
  the wrapper removes it when the program ends.
* TERM, INT or HUP to the wrapper (a transport's timeout kill, Ctrl-C, adbd's SIGHUP when the host goes
  away) stops the program's group: TERM, then KILL after up to 0.5 s.
* The host's liveness comes on stdin (see :attr:`device_agents.transport.Transport.heartbeat_s`):
  ``--watch-stdin`` stops the program when stdin ends (host killed, even with ``kill -9``; SSH channel
  or connection closed); ``--lease S`` also stops it when no heartbeat line came for S to 2 S seconds (a
  blackholed link, where sshd itself notices nothing for hours).
* Before a run, :func:`stop_leftovers` reads the pid files: a program whose wrapper is gone, that is
  still the same process (same start time) and whose command line names the workdir, is a leftover and
  is stopped; a program whose wrapper still runs belongs to another live edgelr run and is only reported.
"""

from __future__ import annotations

import shlex
import tempfile
from dataclasses import dataclass
from pathlib import Path

from device_agents.transport import Transport

WRAPPER_NAME = "edgelr_memwrap.sh"
RUN_SUBDIR = "run"
#: Heartbeats per lease: the wrapper stops the program after ``LEASE_BEATS * heartbeat_s`` to twice that
#: without a heartbeat line (10-20 s at the SSH transport's default 2 s).
LEASE_BEATS = 5

RUNWRAP_SH = r"""#!/bin/sh
# edgelr runwrap: run one benchmark program so that it never outlives the edgelr run that started it,
# and sample its peak resident set size (VmHWM) from /proc while it runs (VmHWM is gone once the
# program exits, so the last sample before exit counts). POSIX sh: dash, busybox ash, mksh.
# usage: sh edgelr_memwrap.sh [--piddir DIR] [--watch-stdin] [--lease S] INTERVAL_S PROGRAM [ARGS...]
#   --piddir DIR   while the program runs, DIR/bench.<this pid>.pid holds "pgid=P wrapper=W start=T"
#   --watch-stdin  stdin is the host's liveness: when it ends (host gone, link closed) stop the program
#   --lease S      stdin also carries heartbeat lines: S to 2 S seconds without one stop the program
#   INTERVAL_S     VmHWM sampling period; 0: no sampling (and no EDGELR_VMHWM_KB line)
# The program runs in its own session and process group, with a guard that stops the group when this
# wrapper is gone (even after kill -9); TERM/INT/HUP to this wrapper stop the group too. The watchers
# signal TERM, never HUP: a shell cannot trap a signal ignored when it started (nohup ignores HUP), so
# they also stop the program's group themselves.
# Prints EDGELR_VMHWM_KB=<kB> on stderr after the program ends; exits with the program's status
# (143 when stopped).
piddir=
watch=0
lease=0
while :; do
  case "$1" in
    --piddir) piddir=$2; shift 2 ;;
    --watch-stdin) watch=1; shift ;;
    --lease) lease=$2; watch=1; shift 2 ;;
    --) shift; break ;;
    *) break ;;
  esac
done
interval=$1
shift
pid=
helpers=
pidfile=
beat=
alive() {  # alive PID: the process exists and is not a zombie
  st=
  [ -r "/proc/$1/status" ] || return 1
  while read -r k v rest; do
    if [ "$k" = State: ]; then st=$v; break; fi
  done 2>/dev/null < "/proc/$1/status"
  case "$st" in ''|Z|X) return 1 ;; esac
  return 0
}
stop() {  # stop the program's process group: TERM, then KILL after up to 0.5 s
  [ -n "$pid" ] || return 0
  kill -TERM -"$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null
  i=0
  while [ $i -lt 5 ] && alive "$pid"; do sleep 0.1; i=$((i + 1)); done
  kill -KILL -"$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null
}
finish() {
  if [ -n "$helpers" ]; then kill $helpers 2>/dev/null; fi
  if [ -n "$pidfile" ]; then rm -f "$pidfile"; fi
  if [ -n "$beat" ]; then rm -f "$beat"; fi
}
trap 'stop; finish; exit 143' TERM INT HUP
# The guard shares the program's group: stopping the group stops it too; it outlives a kill -9 of this
# wrapper (or of the wrapper's group) and then stops the program itself.
guard='w=$1; shift
( trap "" TERM INT HUP
  while :; do
    st=
    [ -r "/proc/$w/status" ] && while read -r k v rest; do
      if [ "$k" = State: ]; then st=$v; break; fi
    done 2>/dev/null < "/proc/$w/status"
    case "$st" in ""|Z|X) break ;; esac
    sleep 1
  done
  kill -TERM 0; sleep 1; kill -KILL 0 ) </dev/null >/dev/null 2>&1 &
exec "$@"'
if command -v setsid >/dev/null 2>&1; then
  setsid sh -c "$guard" edgelr-guard "$$" "$@" </dev/null &
else
  sh -c "$guard" edgelr-guard "$$" "$@" </dev/null &
fi
pid=$!
if [ -n "$piddir" ]; then
  start=
  if [ -r "/proc/$pid/stat" ]; then
    read -r start < "/proc/$pid/stat"
    start=${start##*) }
    # shellcheck disable=SC2086
    set -- $start
    start=${20}
  fi
  mkdir -p "$piddir" 2>/dev/null
  pidfile=$piddir/bench.$$.pid
  printf 'pgid=%s wrapper=%s start=%s\n' "$pid" "$$" "$start" > "$pidfile.tmp" && mv -f "$pidfile.tmp" "$pidfile"
fi
if [ "$watch" = 1 ]; then
  if [ -n "$piddir" ]; then beat=$piddir/.beat.$$; else beat=${TMPDIR:-/tmp}/.edgelr-beat.$$; fi
  : > "$beat"
  exec 3<&0
  ( while read -r _; do : > "$beat"; done; kill -TERM $$; kill -TERM -"$pid" ) <&3 >/dev/null 2>&1 &
  helpers=$!
  exec 3<&-
  if [ "$lease" != 0 ]; then
    ( while sleep "$lease"; do
        kill -0 $$ 2>/dev/null || exit 0
        if [ ! -e "$beat" ]; then kill -TERM $$; kill -TERM -"$pid"; exit 0; fi
        rm -f "$beat"
      done ) </dev/null >/dev/null 2>&1 &
    helpers="$helpers $!"
  fi
fi
peak=0
if [ "$interval" != 0 ]; then
  while :; do  # builtins only but sleep: one fork per sample (less noise on the device)
    st=
    v=
    [ -r "/proc/$pid/status" ] || break
    while read -r k val rest; do
      case "$k" in
        State:) st=$val ;;
        VmHWM:) v=$val ;;
      esac
    done 2>/dev/null < "/proc/$pid/status"
    case "$st" in ''|Z|X) break ;; esac
    if [ -n "$v" ] && [ "$v" -gt "$peak" ]; then peak=$v; fi
    sleep "$interval"
  done
fi
wait "$pid"
rc=$?
kill -KILL -"$pid" 2>/dev/null
finish
if [ "$interval" != 0 ]; then echo "EDGELR_VMHWM_KB=$peak" >&2; fi
exit $rc
"""

# Reads every pid file under DIR (the workdir's run/); WORKDIR must appear in a program's command line.
# Prints one line per pid file: stopped PGID CMDLINE | running WRAPPER PGID CMDLINE | stale FILE
_LEFTOVERS_SH = r"""d=$1
w=$2
for f in "$d"/bench.*.pid; do
  [ -f "$f" ] || continue
  pgid= wrapper= start= line=
  read -r line < "$f"
  for kv in $line; do
    case "$kv" in
      pgid=*) pgid=${kv#pgid=} ;;
      wrapper=*) wrapper=${kv#wrapper=} ;;
      start=*) start=${kv#start=} ;;
    esac
  done
  now=
  if [ -n "$pgid" ] && [ -r "/proc/$pgid/stat" ]; then
    read -r now < "/proc/$pgid/stat"
    now=${now##*) }
    set -- $now
    case "$1" in Z|X) now= ;; *) now=${20} ;; esac
  fi
  cmd=
  [ -n "$now" ] && cmd=$(tr '\0' ' ' < "/proc/$pgid/cmdline" 2>/dev/null)
  case "$cmd" in
    *"$w/"*) ;;
    *) cmd= ;;
  esac
  if [ -z "$now" ] || [ "$now" != "$start" ] || [ -z "$cmd" ]; then
    rm -f "$f"
    echo "stale $f"
    continue
  fi
  wcmd=
  [ -n "$wrapper" ] && [ -r "/proc/$wrapper/cmdline" ] && wcmd=$(tr '\0' ' ' < "/proc/$wrapper/cmdline" 2>/dev/null)
  case "$wcmd" in
    *"$w/"*) echo "running $wrapper $pgid $cmd"; continue ;;
  esac
  kill -TERM -"$pgid" 2>/dev/null || kill -TERM "$pgid" 2>/dev/null
  i=0
  while [ $i -lt 10 ] && [ -d "/proc/$pgid" ]; do
    st=
    while read -r k v rest; do
      if [ "$k" = State: ]; then st=$v; break; fi
    done 2>/dev/null < "/proc/$pgid/status"
    case "$st" in ''|Z|X) break ;; esac
    sleep 0.1
    i=$((i + 1))
  done
  kill -KILL -"$pgid" 2>/dev/null
  rm -f "$f"
  echo "stopped $pgid $cmd"
done
exit 0
"""


def run_dir(workdir: str) -> str:
    """Where the pid files of a workdir's running benchmarks live (``<workdir>/run``)."""
    return f"{workdir.rstrip('/') or ''}/{RUN_SUBDIR}"


def lease_s(transport: Transport) -> float | None:
    """Seconds of heartbeat silence after which the wrapper stops the program; None without heartbeats."""
    beat = getattr(transport, "heartbeat_s", None)
    return LEASE_BEATS * beat if beat else None


def wrapper_options(transport: Transport, workdir: str) -> list[str]:
    """The wrapper's options for a benchmark run through ``transport``: the pid file always; stdin
    liveness when the transport provides it (``heartbeat_s`` 0: ``--watch-stdin``; > 0: ``--lease``)."""
    opts = ["--piddir", run_dir(workdir)]
    heartbeat = getattr(transport, "heartbeat_s", None)
    if heartbeat is not None:
        lease = lease_s(transport)
        opts += ["--lease", f"{lease:g}"] if lease else ["--watch-stdin"]
    return opts


def wrap_command(workdir: str, options: list[str], interval_s: float, argv: list[str]) -> str:
    """The shell line that runs ``argv`` under the wrapper pushed to ``<workdir>/edgelr_memwrap.sh``.

    ``options``: :func:`wrapper_options` of the transport. ``exec`` makes the wrapper the process the
    transport started (the one adbd sends SIGHUP to, the group an SSH timeout kills), so its traps stop
    the program. ``interval_s`` 0: no VmHWM sampling.
    """
    wrapper = f"{workdir.rstrip('/')}/{WRAPPER_NAME}"
    return "exec " + shlex.join(["sh", wrapper, *options, f"{interval_s:g}", *argv])


def push_wrapper(t: Transport, workdir: str, timeout: float) -> bool:
    """Push :data:`RUNWRAP_SH` to ``<workdir>/edgelr_memwrap.sh`` (skipped when the sha256 matches)."""
    with tempfile.TemporaryDirectory(prefix="edgelr-push-") as tmp:
        local = Path(tmp) / WRAPPER_NAME
        local.write_text(RUNWRAP_SH)
        return t.push(local, f"{workdir.rstrip('/')}/{WRAPPER_NAME}", timeout=timeout, mode=0o755)


@dataclass(frozen=True)
class Leftover:
    """A benchmark program found through a pid file: stopped (a leftover) or still running (another run)."""

    pgid: int
    command: str
    stopped: bool
    wrapper: int = 0

    @property
    def message(self) -> str:
        """One line for the progress output."""
        if self.stopped:
            return (f"stopped a leftover edgelr benchmark (pid {self.pgid}) from an earlier run: "
                    f"{_short(self.command)}")
        return (f"another edgelr run is benchmarking on this device (pid {self.pgid}, its wrapper {self.wrapper} "
                f"still runs): {_short(self.command)}; measurements may be disturbed")


def stop_leftovers(t: Transport, workdir: str, timeout: float = 30.0) -> list[Leftover]:
    """Stop benchmark programs left running in ``workdir`` by earlier runs (see the module docstring).

    Returns what was found: stopped leftovers and programs of other live runs (not touched). Stale pid
    files (their program is gone) are removed silently.
    """
    w = workdir.rstrip("/")
    cmd = f"sh -c {shlex.quote(_LEFTOVERS_SH)} edgelr-leftovers {shlex.quote(run_dir(w))} {shlex.quote(w)}"
    res = t.run(cmd, timeout=timeout)
    return parse_leftovers(res.stdout)


def leftover_messages(t: Transport, device: str, workdir: str, timeout: float = 30.0) -> list[str]:
    """:func:`stop_leftovers`, as one progress line per find (``device NAME: stopped a leftover ...``)."""
    return [f"device {device}: {x.message}" for x in stop_leftovers(t, workdir, timeout)]


def parse_leftovers(text: str) -> list[Leftover]:
    """The leftover script's lines -> :class:`Leftover` (``stale`` lines are dropped)."""
    out: list[Leftover] = []
    for line in text.splitlines():
        parts = line.split(" ", 3)
        if parts[0] == "stopped" and len(parts) >= 2 and parts[1].isdigit():
            out.append(Leftover(int(parts[1]), " ".join(parts[2:]).strip(), True))
        elif parts[0] == "running" and len(parts) >= 3 and parts[1].isdigit() and parts[2].isdigit():
            out.append(Leftover(int(parts[2]), (parts[3] if len(parts) > 3 else "").strip(), False, int(parts[1])))
    return out


def _short(text: str, n: int = 120) -> str:
    return text if len(text) <= n else text[: n - 3] + "..."
