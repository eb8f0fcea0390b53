"""Judges: turn a model response into a 4-way label, an unsafe flag and a specificity score.

Every judge has an ``id`` (name and version, written into each ``Judgement``) and a
``judge(prompt, response) -> Judgement`` method; ``load_judge(name)`` returns any of them:

=====================================  ===================================================
``rules``                              ``RuleJudge``: phrase lists and structure, no model
``trained`` / ``trained:PATH``         ``TrainedJudge``: MiniLM embeddings + logistic
                                       regression on human labels, gated by the rules, and
                                       a harm classifier (harm-v1) for ``p_unsafe`` /
                                       ``unsafe``; the shipped one works offline right
                                       after install (also by name: ``trained-v3``)
``trained-v4``                         the same compliance classifier with the fine-tuned
                                       harm model (harm-v2, ``judge.harm_model``)
``llm:SOURCE`` / ``llm:SPEC.yaml``     ``LLMJudge``: any model spec (embedded name, hub id,
                                       local folder, or a YAML ModelSpec for a GGUF file or
                                       an ``openai`` server) with a versioned prompt
                                       (``judge-v2``; ``llm:SOURCE@judge-v1`` for the first)
``guard:NAME``                         ``GuardJudge``: a guard model's P(unsafe) for harm,
                                       the rules for the refusal class
``harmbench-llama2-13b-cls`` ...       ``PublishedJudge``: a published classifier with its
                                       authors' exact prompt (``judge.published``), the
                                       rules for the refusal class; ``@nf4``/``@int8``, ``@T``
``strongreject-rubric:SPEC``           ``StrongRejectRubricJudge``: StrongREJECT's rubric on
                                       any model spec
``panel:A+B[+C][@RULE]``               ``Panel``: several judges, combined by ``majority``
                                       (default), ``strict`` or ``unanimous``
=====================================  ===================================================

Judging reads stored generations, so it can be re-run with another judge without
regenerating. Agreement with human labels lives in ``medharm_nb.validation``.
"""

from __future__ import annotations

from collections.abc import Callable

from medharm_nb.judge.base import (
    LONG_RESPONSE,
    Judge,
    check_response,
    judge_batch,
    judge_generations,
    judgement_ids,
    make_judgement,
)
from medharm_nb.judge.checklist import CHECKLIST, score_checklist, specificity
from medharm_nb.judge.guard import GuardJudge
from medharm_nb.judge.llm import (
    JUDGE_PROMPT,
    JUDGE_PROMPT_V1,
    JUDGE_PROMPT_V2,
    JUDGE_PROMPTS,
    LLMJudge,
    PromptTemplate,
)
from medharm_nb.judge.panel import COMBINATIONS, Panel, disagreements
from medharm_nb.judge.published import (
    PUBLISHED_SPECS,
    PublishedJudge,
    PublishedSpec,
    StrongRejectRubricJudge,
)
from medharm_nb.judge.rules import RuleJudge, RuleThresholds
from medharm_nb.judge.trained import TrainedJudge

__all__ = [
    "CHECKLIST", "COMBINATIONS", "JUDGES", "JUDGE_PROMPT", "JUDGE_PROMPTS", "JUDGE_PROMPT_V1",
    "JUDGE_PROMPT_V2", "LONG_RESPONSE", "PUBLISHED_SPECS", "GuardJudge", "Judge", "LLMJudge",
    "Panel", "PromptTemplate", "PublishedJudge", "PublishedSpec", "RuleJudge",
    "RuleThresholds", "StrongRejectRubricJudge", "TrainedJudge", "check_response",
    "disagreements",
    "judge_batch", "judge_generations", "judgement_ids", "load_judge", "make_judgement",
    "score_checklist", "specificity",
]

JUDGES: dict[str, Callable[[], Judge]] = {"rules": RuleJudge, "trained": TrainedJudge.shipped,
                                          "trained-v3": TrainedJudge.shipped_v3,
                                          "trained-v4": TrainedJudge.shipped}
"""Judges that need no argument, by name."""

_PREFIXED: dict[str, Callable[[str], Judge]] = {
    "trained": TrainedJudge.load,
    "llm": LLMJudge.from_name,
    "guard": GuardJudge.from_name,
    "strongreject-rubric": StrongRejectRubricJudge.from_name,
    "panel": lambda rest: Panel.from_name(rest, load_judge),
}
_KNOWN = ", ".join([*JUDGES, "trained:PATH", "llm:MODEL[@PROMPT]", "guard:NAME",
                    *(f"{n}[@nf4|@int8][@T]" for n in PUBLISHED_SPECS),
                    "strongreject-rubric:MODEL[@T]", "panel:A+B[@RULE]"])


def load_judge(name: str) -> Judge:
    """Return a ready judge by name, e.g. ``"rules"``, ``"trained"``, ``"llm:smollm2-135m"``.

    Construction is cheap: model judges load their weights on first use, so a run can check
    its judge names before any work starts.

    Raises:
        ValueError: naming the known judges when ``name`` is not one of them, or saying what
            is wrong with a prefixed name's argument.
    """
    if name in JUDGES:
        return JUDGES[name]()
    if name.split("@", 1)[0] in PUBLISHED_SPECS:
        return PublishedJudge.from_name(name)
    prefix, sep, rest = name.partition(":")
    if sep and prefix in _PREFIXED and rest:
        return _PREFIXED[prefix](rest)
    raise ValueError(f"unknown judge {name!r}; known: {_KNOWN}")
