"""Training: ``train()`` and ``resume()``, set-up, the loop and its hooks, the data-parallel
strategy, validation, stages, schedules and the batch-size search.

The top layer of the engine: it may import every other part of ``core``.
"""
