"""The plain core, layer 0: configs and their checks (config), the command line and its mistakes
(overrides), a run's record, statuses and exit codes (state), run directories and their locks
(rundir), a job's bookkeeping (job), signals, quiet, search (Optuna trials), and speedups, the one
module of private-name tricks. None of it imports torch or Lightning at the top."""
