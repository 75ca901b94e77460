"""Measure and filter instruction datasets: lengths, embedding coverage, LLM-judge ratings
(Magpie's scales), InsTag complexity/diversity, dedup, and a self-contained HTML report.

>>> from instructforge.analysis import analyze, AnalyzeConfig
>>> result = analyze("runs/demo", AnalyzeConfig(max_embed=5000))      # doctest: +SKIP
>>> result.report                                                      # doctest: +SKIP
PosixPath('runs/demo/report.html')

The heavy parts (sentence-transformers, scikit-learn) load only when embeddings are asked
for; they come with ``pip install 'instructforge[analysis]'``.
"""

from instructforge.analysis.analyze import AnalysisResult, AnalyzeConfig, analyze
from instructforge.analysis.dataset import Dataset, DatasetError, load_dataset
from instructforge.analysis.filter import (
    DatasetFilterConfig,
    FilterError,
    FilterResult,
    filter_dataset,
)
from instructforge.analysis.judge import JudgeConfig

__all__ = [
    "AnalysisResult",
    "AnalyzeConfig",
    "Dataset",
    "DatasetError",
    "DatasetFilterConfig",
    "FilterError",
    "FilterResult",
    "JudgeConfig",
    "analyze",
    "filter_dataset",
    "load_dataset",
]
