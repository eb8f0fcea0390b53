"""A saved standardised logistic regression, the form both trained classifiers ship in.

scikit-learn fits them (``StandardScaler`` then ``LogisticRegression``); what ships is the
JSON of the scaler's means and scales and the coefficients, so judging needs neither
scikit-learn's pickles nor its version to match.
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
        """From a saved classifier's ``scaler_mean``, ``scaler_scale``, ``coef`` and
        ``intercept`` (a zero scale, a constant feature, reads as 1)."""
        scale = np.asarray(params["scaler_scale"], dtype=float)
        return cls(np.asarray(params["scaler_mean"], dtype=float),
                   np.where(scale == 0.0, 1.0, scale),
                   np.asarray(params["coef"], dtype=float), float(params["intercept"]))

    def proba(self, matrix: np.ndarray) -> np.ndarray:
        """The probability per row of a feature matrix."""
        z = ((matrix - self.mean) / self.scale) @ self.coef + self.intercept
        return 1.0 / (1.0 + np.exp(-np.clip(z, -60.0, 60.0)))
