#!/bin/sh
# edgelr on-phone benchmark harness: POSIX sh (toybox/mksh, dash, busybox sh); no bash-isms.
#
# Runs LiteRT's benchmark_model pinned to the big cores and samples, while it runs, the process's
# VmHWM/VmRSS (/proc/PID/status, kB), the battery's current_now/voltage_now/temp, and reads the ODPM
# energy counters and `dumpsys thermalservice` before and after. Prints blocks the host parses
# (edgelr/bench/harnesses/android.py: parse_harness_output):
#
#   EDGELR-BLOCK-BEGIN <name> ... EDGELR-BLOCK-END   thermal_before/after, odpm_before/after,
#                                                     bench_stdout, bench_stderr, samples
#   EDGELR-RESULT-BEGIN key=value ... EDGELR-RESULT-END
#
# Usage: harness.sh --bin PATH [--mask HEX] [--interval SECONDS] [--workdir DIR] -- BENCHMARK_ARGS...
# $EDGELR_ROOT (default empty) prefixes the sysfs paths; only the test stand-in device sets it.

HARNESS_VERSION=1
bin=
mask=
interval=0.1
workdir=
while [ $# -gt 0 ]; do
  case "$1" in
    --bin) bin=$2; shift 2 ;;
    --mask) mask=$2; shift 2 ;;
    --interval) interval=$2; shift 2 ;;
    --workdir) workdir=$2; shift 2 ;;
    --) shift; break ;;
    *) echo "harness.sh: unknown option '$1'; usage: harness.sh --bin PATH [--mask HEX] [--interval S] -- ARGS" >&2
       exit 64 ;;
  esac
done
if [ -z "$bin" ] || [ ! -x "$bin" ]; then
  echo "harness.sh: benchmark binary '$bin' is missing or not executable" >&2
  exit 65
fi
[ -n "$workdir" ] || workdir=$(dirname "$0")
R=${EDGELR_ROOT:-}
BAT=$R/sys/class/power_supply/battery
out=$workdir/bench.$$.out
err=$workdir/bench.$$.err
smp=$workdir/bench.$$.samples
trap 'rm -f "$out" "$err" "$smp"' EXIT
trap 'exit 143' TERM HUP INT

block() {  # block NAME FILE...
  echo "EDGELR-BLOCK-BEGIN $1"
  shift
  for f in "$@"; do
    [ -r "$f" ] && cat "$f"
  done
  echo "EDGELR-BLOCK-END"
}

readval() {  # readval FILE -> first line, or empty
  v=
  [ -r "$1" ] && read -r v < "$1"
  echo "$v"
}

odpm_block() {  # odpm_block NAME
  echo "EDGELR-BLOCK-BEGIN $1"
  for f in "$R"/sys/bus/iio/devices/iio:device*/energy_value; do
    [ -r "$f" ] || continue
    echo "file=$f"
    cat "$f"
  done
  echo "EDGELR-BLOCK-END"
}

thermal_block() {  # thermal_block NAME
  echo "EDGELR-BLOCK-BEGIN $1"
  if command -v dumpsys >/dev/null 2>&1; then
    dumpsys thermalservice 2>/dev/null
  fi
  echo "EDGELR-BLOCK-END"
}

uptime_cs() {  # centiseconds since boot, from /proc/uptime
  read -r up rest < /proc/uptime
  s=${up%.*}
  f=${up#*.}
  echo $((s * 100 + ${f#0}))
}

# -- pinning ---------------------------------------------------------------------------------------
pinned=none
pin_note=
if [ -n "$mask" ]; then
  if command -v taskset >/dev/null 2>&1; then
    if taskset "$mask" true >/dev/null 2>&1; then
      pinned=$mask
    else
      pin_note="taskset $mask failed (cores offline or mask invalid); ran unpinned"
    fi
  else
    pin_note="no taskset on the device; ran unpinned"
  fi
fi

thermal_block thermal_before
odpm_block odpm_before
t_start=$(uptime_cs)

if [ "$pinned" != none ]; then
  taskset "$pinned" "$bin" "$@" > "$out" 2> "$err" &
else
  "$bin" "$@" > "$out" 2> "$err" &
fi
pid=$!

# -- sampling while it runs ------------------------------------------------------------------------
: > "$smp"
hwm_max=0
nsamples=0
while :; do
  state=
  hwm=
  rss=
  if [ -r "/proc/$pid/status" ]; then
    while read -r k v rest; do
      case "$k" in
        State:) state=$v ;;
        VmHWM:) hwm=$v ;;
        VmRSS:) rss=$v ;;
      esac
    done 2>/dev/null < "/proc/$pid/status"
  fi
  case "$state" in
    ''|Z|X) break ;;
  esac
  if [ -n "$hwm" ]; then
    [ "$hwm" -gt "$hwm_max" ] && hwm_max=$hwm
    cur=$(readval "$BAT/current_now")
    volt=$(readval "$BAT/voltage_now")
    btemp=$(readval "$BAT/temp")
    bstat=$(readval "$BAT/status")
    echo "$(uptime_cs) $hwm ${rss:-0} ${cur:--} ${volt:--} ${btemp:--} ${bstat:--}" >> "$smp"
    nsamples=$((nsamples + 1))
  fi
  sleep "$interval"
done
wait "$pid"
rc=$?
t_end=$(uptime_cs)

odpm_block odpm_after
thermal_block thermal_after
block bench_stdout "$out"
block bench_stderr "$err"
block samples "$smp"
echo "EDGELR-RESULT-BEGIN"
echo "harness_version=$HARNESS_VERSION"
echo "exit_code=$rc"
echo "pinned=$pinned"
echo "pin_note=$pin_note"
echo "uptime_start_cs=$t_start"
echo "uptime_end_cs=$t_end"
echo "vmhwm_kb=$hwm_max"
echo "samples=$nsamples"
echo "interval_s=$interval"
echo "EDGELR-RESULT-END"
exit 0
