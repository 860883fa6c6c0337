"""Evaluation for the benchmark runner: editing metrics, capability probes, plots and reports.

Submodules: :mod:`.scoring` (batched teacher-forced scoring, generation), :mod:`.metrics`
(efficacy / generality / specificity, token accuracies, fluency, leakage and perturbation),
:mod:`.capability` (perplexity, MMLU), :mod:`.checkpoint` (atomic checkpoints),
:mod:`.plots` and :mod:`.report` (figures, CSV and markdown tables). Nothing is imported eagerly.
"""
