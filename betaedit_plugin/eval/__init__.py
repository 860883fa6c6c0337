"""Evaluation: editing metrics, capability probes, plots and reports.

Submodules: :mod:`.scoring` (the one teacher-forced scoring path, generation, EasyEdit's token
metrics), :mod:`.metrics` (efficacy / generality / specificity, token accuracies, fluency, leakage
and perturbation), :mod:`.capability` (perplexity, MMLU), :mod:`.plots` and :mod:`.report`
(figures, CSV and markdown tables). Nothing is imported eagerly. A run's checkpoints live with
the runner (`betaedit_plugin.runner.checkpoint`).
"""
