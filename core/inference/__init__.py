"""Inference: ``classifier.load_classifier`` (the one place a ``Classifier`` is assembled),
``evaluate`` and ``classify``.

Imports the base, ``core.data``, ``core.models`` and ``core.runs``; never training.
"""
