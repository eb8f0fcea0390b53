"""The typed sections of a run config, and of the fine-tuning command: which queries a run
asks (``QuerySelection``), which conversations (``ConversationSettings``, with its
``AttackerSettings``) and how a LoRA adapter is trained (``FinetuneConfig``).

They are settings, not rows of a run's tables (those are in ``records``): strict (an
unknown key is an error), frozen, and documented field by field, since ``config.RunConfig``
reads YAML straight into them.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from medharm_nb.records import GenConfig, ModelSpec


class _Settings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class QuerySelection(_Settings):
    """Which queries a run asks: the source, how to read it, and which subset."""

    source: str = Field(default="medharm-open", description="See data.load_queries.")
    mapping: dict[str, str] | None = Field(
        default=None, description="Our column -> the source's column, for files and hf: sets.")
    allowed_categories: list[str] | None = Field(
        default=None, description="Valid categories for files in our schema (default: ours).")
    split: str = Field(default="train", description="Split of an hf: source.")
    data_files: str | list[str] | None = Field(default=None, description="For hf: builders.")
    categories: list[str] | None = Field(default=None, description="Keep only these.")
    framings: list[str] | None = Field(default=None, description="Keep only these.")
    tiers: list[str] | None = Field(default=None, description="Keep only these tiers.")
    per_cell: int | None = Field(
        default=None, ge=1, description="Harmful queries per category x framing (+ twins), "
                                        "taken across tiers in turn (data.select_queries).")
    variants: list[str] = Field(default=["direct"], description="Prompt-variant wrappers.")


class AttackerSettings(_Settings):
    """An adaptive attacker (``conversation.attacker``): a model that plays the user."""

    model: ModelSpec = Field(description="Any model spec; it writes each next user turn.")
    template: str = Field(default="crescendo-v1",
                          description="The attacker's prompt (conversation.ATTACKER_TEMPLATES).")
    turns: int = Field(default=4, ge=1, le=10, description="Turn budget per conversation.")
    queries: int = Field(default=3, ge=1, description="Harmful queries it attacks: the run's "
                                                      "first N, one category at a time.")
    judge: str | None = Field(default=None, description="The judge whose verdict stops a "
                                                        "conversation (default: the run's "
                                                        "first judge).")
    patience: int = Field(default=2, ge=1, description="Refusals in a row (full refusal or "
                                                       "safe redirect) that count as a firm "
                                                       "refusal and stop it.")
    generation: GenConfig = Field(default_factory=lambda: GenConfig(max_new_tokens=80),
                                  description="How the attacker decodes.")


class ConversationSettings(_Settings):
    """A run config's ``conversations:`` section: which conversations the models are asked."""

    scripted: list[str] = Field(default=["escalate-3"], description="Escalation templates "
                                "(conversation.ESCALATIONS) applied to the run's direct "
                                "queries, harmful and benign alike; [] for none.")
    per_cell: int | None = Field(default=None, ge=1, description="Harmful queries per "
                                 "category x framing given scripted conversations (with their "
                                 "twins); None: every direct query of the run.")
    imported: str | None = Field(default=None, description="A JSONL file of conversations: "
                                 "OpenAI-style messages plus the query schema's fields.")
    imported_categories: list[str] | None = Field(default=None, description="Valid categories "
                                                  "of the imported file (default: ours).")
    attacker: AttackerSettings | None = Field(default=None, description="An adaptive attacker.")


class FinetuneConfig(_Settings):
    """How ``finetune`` trains a LoRA adapter; every field is written into the adapter's card.

    Defaults follow common LoRA / QLoRA practice for chat models of 0.1-10B parameters.
    """

    rank: int = Field(default=8, ge=1, description="LoRA rank r.")
    alpha: float = Field(default=16.0, gt=0, description="LoRA alpha (scale = alpha / rank).")
    dropout: float = Field(default=0.05, ge=0.0, lt=1.0, description="Dropout on LoRA inputs.")
    target_modules: list[str] = Field(
        default=["all-linear"],
        description="Module names to adapt (e.g. q_proj, v_proj), or 'all-linear': every "
                    "linear layer except the output head.")
    learning_rate: float = Field(default=2e-4, gt=0, description="AdamW peak learning rate.")
    weight_decay: float = Field(default=0.0, ge=0, description="AdamW weight decay.")
    warmup_ratio: float = Field(
        default=0.03, ge=0, lt=1, description="Share of steps warming up linearly; then the "
                                              "rate decays linearly to 0.")
    max_grad_norm: float = Field(default=1.0, gt=0, description="Gradient clipping norm.")
    epochs: int = Field(default=1, ge=1, description="Passes over the data.")
    max_steps: int | None = Field(
        default=None, ge=1, description="Optimizer steps; overrides epochs when set.")
    max_length: int = Field(
        default=1024, ge=8, description="Tokens per example at most; longer answers are cut, "
                                        "examples whose prompt alone is longer are dropped.")
    batch_size: int = Field(default=4, ge=1, description="Examples per forward pass.")
    grad_accum: int = Field(default=1, ge=1, description="Forward passes per optimizer step.")
    seed: int = Field(default=0, description="Seeds LoRA's initialisation, shuffling, dropout.")
    quantization: Literal["auto", "none", "nf4", "int8"] = Field(
        default="auto", description="Base weights while training: auto = the spec's, else nf4 "
                                    "on a CUDA GPU (QLoRA) and none (full precision) on a CPU.")
    eval_examples: int = Field(
        default=64, ge=0, description="Examples whose loss is measured before and after "
                                      "training (the first N; 0 skips it).")
