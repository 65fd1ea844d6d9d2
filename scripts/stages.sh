# Stage timing for scripts/test.sh (sourced, not run): `stage NAME` ends the stage before
# and starts NAME; `stage_summary` prints every stage's wall and CPU seconds and the slowest
# QEMU scenarios. CPU seconds are user + system time of the stage's finished child processes
# (bash's `times`), so a stage that waits on a loaded machine shows wall >> CPU.

_stage_names=()
_stage_wall=()
_stage_cpu=()
_stage_name=""
_stage_started=0
_stage_cpu_started=0
_run_started=$SECONDS

# User + system seconds of all finished children of this shell, as a decimal number.
_children_cpu() {
  times | awk 'NR == 2 {
    total = 0
    for (i = 1; i <= 2; i++) {
      split($i, p, "m"); sub("s", "", p[2]); total += p[1] * 60 + p[2]
    }
    printf "%.0f\n", total
  }'
}

_stage_end() {
  if [ -n "$_stage_name" ]; then
    _stage_names+=("$_stage_name")
    _stage_wall+=($((SECONDS - _stage_started)))
    _stage_cpu+=($(($(_children_cpu) - _stage_cpu_started)))
  fi
  _stage_name=""
}

stage() {
  _stage_end
  _stage_name="$*"
  _stage_started=$SECONDS
  _stage_cpu_started=$(_children_cpu)
  printf '\n==> %s (%ds)\n' "$*" $((SECONDS - _run_started))
}

# Prints the summary; the slowest scenarios come from the BERTH_SCENARIO_TIMES file
# (qemu-tests/src/scenario.rs appends `<name> <seconds on a slot> <seconds waited>`).
stage_summary() {
  _stage_end
  local i total=$((SECONDS - _run_started))
  printf '\n==> stage summary (wall and CPU seconds; %d s in all, %d min)\n' "$total" $((total / 60))
  printf '%7s %7s  %s\n' wall cpu stage
  for i in "${!_stage_names[@]}"; do
    printf '%7d %7d  %s\n' "${_stage_wall[$i]}" "${_stage_cpu[$i]}" "${_stage_names[$i]}"
  done
  if [ -n "${BERTH_SCENARIO_TIMES:-}" ] && [ -s "$BERTH_SCENARIO_TIMES" ]; then
    printf '\nslowest QEMU scenarios (seconds on a QEMU slot, seconds waited for one):\n'
    sort -k2,2nr "$BERTH_SCENARIO_TIMES" | head -n 12 |
      awk '{ printf "%7.0f %7.0f  %s\n", $2, $3, $1 }'
    awk '{ s += $2 } END { printf "%7.0f          all %d scenarios\n", s, NR }' "$BERTH_SCENARIO_TIMES"
  fi
}
