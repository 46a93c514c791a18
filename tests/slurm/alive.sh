# Sourced by start-slurm.sh and stop-slurm.sh.
# alive PIDFILE COMM: the PID in PIDFILE is a live process whose comm is COMM
alive() {
  local pid
  [ -s "$1" ] || return 1
  pid=$(cat "$1")
  [ -r "/proc/$pid/comm" ] && [ "$(cat "/proc/$pid/comm")" = "$2" ]
}
