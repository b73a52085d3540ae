"""The Ray edge of a search: the only package that imports Ray.

- :mod:`~tune_losses.tune.cli`: ``python -m tune_losses.search`` (flags, dry run, exit codes);
- :mod:`~tune_losses.tune.run`: a search from start to summary (MLflow parent, Ray, Tuner,
  confirm stage, summary);
- :mod:`~tune_losses.tune.tuner`: the Tuner of a run, fresh or restored;
- :mod:`~tune_losses.tune.searcher`: the Optuna sampler and the searcher that tells Optuna how
  each trial ended; :mod:`~tune_losses.tune.schedulers`: ASHA (:mod:`~tune_losses.tune.rungs`)
  or FIFO, ending a rerun where Optuna ended it;
- :mod:`~tune_losses.tune.trainable`: one trial = one :class:`~tune_losses.engine.Trainer`;
- :mod:`~tune_losses.tune.callback`: trial events -> :class:`~tune_losses.tracking.SearchTracker`;
- :mod:`~tune_losses.tune.state`: the run folder and what ``--resume`` reads back.

Modules import Ray inside functions or at their own import, never from this ``__init__``,
so the CLI can set ``RAY_AUTH_MODE`` before Ray is first imported.
"""
