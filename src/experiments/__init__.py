"""Learn and compare how models train: Lightning models and data, Hydra configs, TensorBoard dashboards.

How the code is laid out (tests/test_layers.py keeps it so: imports, those inside functions too,
point only down, and none goes round in a cycle):

  3  process and Hydra   api (train, sweep and load from Python and Jupyter), cli (the process:
                         arguments, every mistake as one sentence, exit codes; the one error
                         translation, for the api too), train, evaluate, lr_find, gradcheck,
                         collect (entry points), hydra_callbacks, hydra_plugins/ (the grid,
                         compare and Optuna sweepers, the vectorized and Slurm launchers)
  2  one fit each        run.train_and_test (a single run), population.group.train_group (a
                         population); neither imports the other, both start with build.start_fit
                         and give each run build.run_parts
  1  building blocks     data/ (one LightningDataModule a file), models/ (one LightningModule a
                         file), callbacks/, build (what a config builds), loggers, hparams,
                         report/ (what a sweep leaves: its runs read back, the seeds' statistics
                         and sweep=compare's verdict, tables, figures, its TensorBoard run),
                         population/ (its module, optimizer, batched arithmetic and checkpoints)
  0  core/ (plain code)  config, overrides (the command line and its mistakes), state (a run's
                         record, statuses, exit codes), rundir (directory locks, resume checks),
                         job (a job's bookkeeping: its directory, failure record, summary, exit
                         code), signals, quiet, speedups (the one module of private-name tricks),
                         search

One run, from `python -m experiments.train` to its metrics.json:
  cli.run_cli -> Hydra composes conf/train.yaml, hydra_callbacks.RunDirectoryCheck claims the run
  directory -> train.main -> train.run_job (fresh, resumed, or a process of its own) ->
  run.train_and_test: build.start_fit, build.build (data, model, optimizer and schedule),
  build.run_parts (state, loggers, callbacks), recorder -> build.make_trainer -> Trainer.fit, the model's training_step ->
  callbacks.recorder.StatusRecord writes metrics.json (at the start, each validation, the end) ->
  Trainer.test on best.ckpt -> train.main: job.report prints the summary, job.stop_code the exit.

The population is an add-on: it builds each job's model, state, loggers, recorder and Trainer with
the single run's pieces (build), trains the models' weights as rows of one tensor, and gives the
recorder's parts a `runs` object (population.module.PopulationRuns, callbacks.recorder.OneRun for
one run). Its contract with the single run is the bit-for-bit tests of tests/test_vectorized.py.

Which test pins each README guarantee: tests/test_guarantees.py (What the package guarantees),
test_vectorized.py (Many jobs in one pass), test_search.py (Finding a learning rate),
test_reliability.py (Interrupting and resuming), test_sweeps.py (Sweeps, Comparing fairly),
test_api.py (From Python and Jupyter, the notebooks), test_tensorboard.py
(TensorBoard), test_distributed.py and test_slurm.py (Scaling out), test_lightning_features.py (schedules, the
Extending example), test_data.py (MNIST offline), test_cli.py (the two commands, the summary).
"""

from experiments.core.config import UserError

__all__ = ["UserError"]
__version__ = "0.1.0"
