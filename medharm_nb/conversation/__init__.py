"""Conversations: a study's multi-turn unit, asked, judged and analysed turn by turn.

A run config's ``conversations:`` section (``records.ConversationSettings``) adds them to
every stage of the series; each module follows the data:

=====================  ===============================================================
``templates``          scripted escalations and the attacker's prompt: named, versioned,
                       hashed (like ``variants``)
``build``              the ``conversations`` table: scripted from the run's queries,
                       imported from JSONL (validated, file:line errors), attacker goals
``turns``              asking turn by turn, each model's own answers in its history,
                       cached per prefix (``turn_id``); the ``turns`` table
``attacker``           a model plays the user (Crescendo-style), stopping on success or
                       firm refusal
``results``            per-turn results with the conversation as context; unsafe by turn,
                       turns to failure (Kaplan-Meier), over-refusal by turn, single- vs
                       multi-turn deltas, amplification by turn
``guard``              guards on each turn's message and on the whole history; false
                       blocks on benign conversations
``stages``             what each notebook adds when a run has conversations
``plots``, ``report``  the by-turn charts and the report's "by turn" section
=====================  ===============================================================

Only ``templates`` and ``build`` are imported here, so the config can check template names
without loading the rest.
"""

from medharm_nb.conversation.build import (
    CONV_SEP,
    ConversationValidationError,
    attacker_goals,
    build_conversations,
    load_conversations,
    scripted,
)
from medharm_nb.conversation.templates import (
    ATTACKER_TEMPLATES,
    ESCALATIONS,
    AttackerTemplate,
    Escalation,
    get_attacker_template,
    get_escalation,
    template_hashes,
)

__all__ = ["ATTACKER_TEMPLATES", "CONV_SEP", "ESCALATIONS", "AttackerTemplate",
           "ConversationValidationError", "Escalation", "attacker_goals",
           "build_conversations", "get_attacker_template", "get_escalation",
           "load_conversations", "scripted", "template_hashes"]
