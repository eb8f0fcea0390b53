"""A saved (standardised) logistic regression, the form every trained linear classifier
ships in: the trained judge, the harm classifier and the MiniLM guard.

scikit-learn fits them (``StandardScaler`` then ``LogisticRegression``, or the regression
alone on embeddings); what ships is the JSON of the scaler's means and scales and the
coefficients, so scoring needs neither scikit-learn's pickles nor its version to match.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Logistic:
    """P = sigmoid(((x - mean) / scale) . coef + intercept)."""

    mean: np.ndarray
    scale: np.ndarray
    coef: np.ndarray
    intercept: float

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> Logistic:
        """From a saved classifier's ``coef``, ``intercept`` and, when it standardised its
        features, ``scaler_mean`` and ``scaler_scale`` (a zero scale, a constant feature,
        reads as 1; no scaler: mean 0, scale 1)."""
        coef = np.asarray(params["coef"], dtype=float)
        scale = np.asarray(params.get("scaler_scale", np.ones_like(coef)), dtype=float)
        return cls(np.asarray(params.get("scaler_mean", np.zeros_like(coef)), dtype=float),
                   np.where(scale == 0.0, 1.0, scale), coef, float(params["intercept"]))

    def proba(self, matrix: np.ndarray) -> np.ndarray:
        """The probability per row of a feature matrix."""
        z = ((matrix - self.mean) / self.scale) @ self.coef + self.intercept
        return 1.0 / (1.0 + np.exp(-np.clip(z, -60.0, 60.0)))
