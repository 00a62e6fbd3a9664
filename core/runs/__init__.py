"""Runs on disk: the run store (folders, config/status/metrics readers, the lock),
checkpoints, model bundles and the resume point read from them.

Imports the base, ``core.data`` and ``core.models``; never training or inference.
"""
