"""Reading responses and labelling them: the compare view and the annotation loop.

Logic lives in plain functions over DataFrames (``source``: lazy reading; ``layout``: filters
and side-by-side units; ``sampling``: what to label; ``annotations``: records, resume, gold
export; ``agreement``: kappas, alpha, judges vs the human majority); ``compare`` and
``annotate`` wire ipywidgets to them, and ``cards`` renders the HTML.
"""

from medharm_nb.review.agreement import (
    annotator_agreement,
    judge_agreement,
    majority,
    pairwise_kappa,
)
from medharm_nb.review.annotate import AnnotationView
from medharm_nb.review.annotations import (
    agreement_report,
    export_gold,
    gold_frame,
    make_annotation,
    read_annotations,
)
from medharm_nb.review.compare import CompareView
from medharm_nb.review.conversation import (
    ConversationView,
    conversation_view,
    turn_annotation_view,
    turn_judge_agreement,
)
from medharm_nb.review.guarded import guard_scores
from medharm_nb.review.layout import MODES, Filters, build_layout
from medharm_nb.review.sampling import STRATEGIES, Plan, make_plan
from medharm_nb.review.source import ReviewSource

__all__ = [
    "MODES", "STRATEGIES", "AnnotationView", "CompareView", "ConversationView", "Filters", "Plan",
    "ReviewSource", "agreement_report", "annotator_agreement", "build_layout",
    "conversation_view", "export_gold", "gold_frame", "guard_scores", "judge_agreement",
    "majority", "make_annotation", "make_plan", "pairwise_kappa", "read_annotations",
    "turn_annotation_view", "turn_judge_agreement",
]
