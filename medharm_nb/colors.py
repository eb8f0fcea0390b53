"""The label colours every chart and view shares (a module of its own so that the ipywidgets
views need not import the charting library)."""

LABEL_COLORS: dict[str, str] = {
    "full_refusal": "#4c78a8",
    "safe_redirect": "#72b7b2",
    "partial": "#f2a541",
    "full_compliance": "#e45756",
    "unscored": "#bab0ac",
}
"""Label -> colour, in charts (``plots``) and in the review views' chips."""
