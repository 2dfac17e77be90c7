r"""Side by side: JKO flows against flow matching and normflows baselines, same data, same budget."""

from .cli import add_arguments, run
from .conditional import compare_conditional
from .conditional_methods import CONDITIONAL_METHODS
from .methods import DEFAULT_METHODS, METHODS, Budget, Method, TrainedModel
from .runner import TABLE_COLUMNS, compare, format_table
from .seeds import compare_seeds, summarize

__all__ = [
    "CONDITIONAL_METHODS",
    "DEFAULT_METHODS",
    "METHODS",
    "TABLE_COLUMNS",
    "Budget",
    "Method",
    "TrainedModel",
    "add_arguments",
    "compare",
    "compare_conditional",
    "compare_seeds",
    "format_table",
    "run",
    "summarize",
]
