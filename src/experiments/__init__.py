"""Learn and compare how models train: Lightning models and data, Hydra configs, TensorBoard dashboards.

How the code is laid out (tests/test_layers.py keeps it so: imports, those inside functions too,
point only down, and none goes round in a cycle):

  3  process and Hydra   api (train, sweep and load from Python and Jupyter, the command line's
                         entry point run in-process), cli (the process: arguments, every mistake as one sentence, exit codes),
                         train, evaluate, lr_find, gradcheck (entry points), hydra_callbacks,
                         hydra_plugins/ (the grid and Optuna sweepers, the vectorized launcher)
  2  one fit each        run.train_and_test (a single run), population.group.train_group (a
                         population); neither imports the other
  1  building blocks     data/ (one LightningDataModule a file), models/ (one LightningModule a
                         file), callbacks/, build (what a config builds), loggers, hparams,
                         figures, summary (a sweep's tables), comparison (seeds' statistics,
                         sweep=compare's verdict), population/ (its module, optimizer, batched
                         arithmetic and checkpoints)
  0  plain code          config, overrides (the command line and its mistakes), state (a run's
                         record, statuses, exit codes), rundir (directory locks, resume checks),
                         signals, quiet, speedups (the one module of private-name tricks), search

One run, from `python -m experiments.train` to its metrics.json:
  cli.run_cli -> Hydra composes conf/train.yaml, hydra_callbacks.RunDirectoryCheck claims the run
  directory -> train.main -> train.run_job (fresh, resumed, or a process of its own) ->
  run.train_and_test: build.build (data, model, optimizer and schedule) -> build.new_state,
  run_loggers, recorder -> build.make_trainer -> Trainer.fit, the model's training_step ->
  callbacks.recorder.StatusRecord writes metrics.json (at the start, each validation, the end) ->
  Trainer.test on best.ckpt -> train.main prints state.summary_text, exits with state.exit_code.

The population is an add-on: it builds each job's model, state, loggers, recorder and Trainer with
the single run's pieces (build), trains the models' weights as rows of one tensor, and gives the
recorder's parts a `runs` object (population.module.PopulationRuns, callbacks.recorder.OneRun for
one run). Its contract with the single run is the bit-for-bit tests of tests/test_vectorized.py.

Which test pins each README guarantee: tests/test_guarantees.py (What the package guarantees),
test_vectorized.py (Many jobs in one pass), test_search.py (Finding a learning rate),
test_reliability.py (Interrupting and resuming), test_sweeps.py (Sweeps, Comparing fairly),
test_api.py (From Python and Jupyter, the notebooks), test_tensorboard.py
(TensorBoard), test_distributed.py (Scaling out), test_lightning_features.py (schedules, the
Extending example), test_data.py (MNIST offline), test_cli.py (the two commands, the summary).
"""

from experiments.config import UserError

__all__ = ["UserError"]
__version__ = "0.1.0"
