"""Reusable widgets of the workbench, each carrying its own DEFAULT_CSS."""

from __future__ import annotations

from tui.widgets.fields import ChoiceField, ModelPicker
from tui.widgets.heatmap import ConfusionHeatmap
from tui.widgets.line_chart import LineChart, Series
from tui.widgets.loss_chart import LossChart
from tui.widgets.lr_chart import LrChart
from tui.widgets.memory import MemoryPanel
from tui.widgets.prob_bars import ProbabilityBars

__all__ = ["ChoiceField", "ConfusionHeatmap", "LineChart", "LossChart", "LrChart", "MemoryPanel", "ModelPicker", "ProbabilityBars", "Series"]
