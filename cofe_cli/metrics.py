"""Which of a model's metrics a person (and the choice of the best model) looks at, and which way is better."""

from __future__ import annotations

# Train metrics a site training with differential privacy (engine/privacy.py) reports every round: the
# epsilon it has spent, and 1.0 when --max-epsilon kept it from training.
EPSILON_METRIC = "epsilon"
BUDGET_EXHAUSTED_METRIC = "privacy_budget_exhausted"

# Distances and errors: smaller is better. Everything else GaNDLF reports (Dice, accuracy, F1, ...) grows.
_LOWER_IS_BETTER = ("loss", "hd95", "hd100", "hausdorff", "mse", "mae", "rmse")


def headline_metric(names) -> str | None:
    """The metric a person looks at first: Dice for segmentation, else the first non-loss one."""
    names = list(names)
    for candidate in names:
        if "dice" in candidate:
            return candidate
    return next((n for n in names if "loss" not in n), names[0] if names else None)


def higher_is_better(name: str) -> bool:
    return not any(marker in name.lower() for marker in _LOWER_IS_BETTER)
