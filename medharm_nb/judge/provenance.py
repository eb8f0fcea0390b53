"""Which rows a trained judge learned from, declared in its artifact and checked by content.

A figure measured on a judge's own training rows is development-set, not validation. So
every shipped classifier declares its training rows, and every set a judge is scored on (a
gold set, or a run's answers) is checked against them row by row, by content: a row is the
hash of its request and response (``row_hash``), never its file name, id or order, so a
renamed, re-sampled or re-ordered copy of the training data is still recognised.

**The declaration.** An artifact stores, under ``TRAINING_ROWS`` (``"training_rows"``), one
object per classifier (``TrainingRows.to_dict``)::

    {"scheme": "medharm-row-v1",          # how hashes are made: row_hash
     "splits": ["unsafe"],                # the verdicts it decides: compliance, label3, unsafe
     "sources": {"harmbench": 602, ...},  # what the rows are, for people
     "n": 1914,
     "hashes": ["3f0c9a...", ...],        # sorted row_hash of every training row
     "cross_validated": [                 # optional: held-out figures made when training
        {"source": "harmbench", "group": "all", "split": "unsafe", "metric": "accuracy",
         "accuracy": 0.754, "lo": 0.721, "hi": 0.786, "n": 602,
         "scheme": "nested grouped 5-fold"}]}

``source`` is the gold set's name as ``judge.gold`` loads it (``xstest``, ``harmbench``,
``beavertails``, ``pku-saferlhf``), ``group`` its ``source_model`` or ``all``.

A judge object offers its declarations through ``training_data()`` (a list of
``TrainingRows``; the rule judge declares the XSTest answers its phrase lists were written
reading); ``declared`` also finds them without it, in ``judge.params`` and
``judge.harm.params`` (the trained judge's two classifiers), in a panel's members and in a
guard or published judge's label judge.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import polars as pl

TRAINING_ROWS = "training_rows"
"""The key under which an artifact declares its training rows."""
ROW_SCHEME = "medharm-row-v1"
"""``row_hash``'s scheme: SHA-256 of the NFC-normalised, whitespace-collapsed request and
response joined by a unit separator, first 16 hex digits."""
SPLIT_NAMES: tuple[str, ...] = ("compliance", "label3", "unsafe")
_SPACE = re.compile(r"\s+")


def _norm(text: str | None) -> str:
    return _SPACE.sub(" ", unicodedata.normalize("NFC", text or "")).strip()


def row_hash(prompt: str | None, response: str | None) -> str:
    """The content hash of one (request, response) row (``ROW_SCHEME``)."""
    blob = _norm(prompt) + "\x1f" + _norm(response)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]


def row_hashes(prompts: Iterable[str | None], responses: Iterable[str | None]) -> list[str]:
    """``row_hash`` of each (request, response) pair."""
    return [row_hash(p, r) for p, r in zip(prompts, responses, strict=True)]


@dataclass(frozen=True)
class TrainingRows:
    """One classifier's declared training rows.

    Attributes:
        component: Which part of the judge it is (``compliance``, ``harm``, ...).
        splits: The validation splits its verdicts decide (a subset of ``SPLIT_NAMES``).
        hashes: ``row_hash`` of every training row.
        sources: Rows per source, for people.
        cross_validated: Held-out figures stored when it was trained (see the module
            docstring); used in place of in-sample ones.
    """

    component: str
    splits: tuple[str, ...]
    hashes: frozenset[str]
    sources: dict[str, int] = field(default_factory=dict)
    cross_validated: tuple[dict[str, Any], ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """The JSON form an artifact stores under ``TRAINING_ROWS``."""
        return {"scheme": ROW_SCHEME, "splits": list(self.splits), "sources": self.sources,
                "n": len(self.hashes), "hashes": sorted(self.hashes),
                "cross_validated": list(self.cross_validated)}

    @classmethod
    def from_dict(cls, component: str, blob: dict[str, Any], where: str = "") -> TrainingRows:
        """Read a declaration (``to_dict``'s form).

        Raises:
            ValueError: naming ``where`` when the scheme is unknown or a split is not one of
                ``SPLIT_NAMES``.
        """
        if blob.get("scheme") != ROW_SCHEME:
            raise ValueError(f"{where or component}: training rows hashed with scheme "
                             f"{blob.get('scheme')!r}; this version reads {ROW_SCHEME!r}")
        splits = tuple(blob.get("splits") or ())
        unknown = sorted(set(splits) - set(SPLIT_NAMES))
        if unknown or not splits:
            raise ValueError(f"{where or component}: training rows must name the splits they "
                             f"decide, from {list(SPLIT_NAMES)}; got {list(splits)}")
        return cls(component, splits, frozenset(blob.get("hashes") or ()),
                   dict(blob.get("sources") or {}), tuple(blob.get("cross_validated") or ()))


def declare(frame: pl.DataFrame, component: str, splits: Sequence[str],
            source: str | None = None,
            cross_validated: Sequence[dict[str, Any]] = ()) -> TrainingRows:
    """The declaration of a classifier trained on ``frame``'s ``prompt``, ``response`` rows.

    Args:
        frame: The training rows, as the classifier read them.
        component: See ``TrainingRows``.
        splits: See ``TrainingRows``.
        source: A column naming each row's source (counted in ``sources``), or None.
        cross_validated: Held-out figures to store with it.
    """
    sources = (dict(sorted(frame[source].value_counts().iter_rows())) if source
               else {"all": frame.height})
    return TrainingRows(component, tuple(splits),
                        frozenset(row_hashes(frame["prompt"], frame["response"])),
                        {str(k): int(v) for k, v in sources.items()}, tuple(cross_validated))


def declared(judge: Any) -> list[TrainingRows]:
    """Every classifier of a judge that declares its training rows (empty: none does, e.g.
    the rules, or a published classifier whose training data are not ours to check)."""
    offered = getattr(judge, "training_data", None)
    if callable(offered):
        return list(offered())
    found = []
    for name, part in (("compliance", judge), ("harm", getattr(judge, "harm", None))):
        params = getattr(part, "params", None)
        if isinstance(params, dict) and TRAINING_ROWS in params:
            found.append(TrainingRows.from_dict(name, params[TRAINING_ROWS],
                                                f"{getattr(judge, 'id', name)} ({name})"))
    # A panel's members; a guard or published judge's label judge (the rules).
    for member in [*(getattr(judge, "judges", None) or ()), getattr(judge, "label_judge", None)]:
        if member is not None:
            found += declared(member)
    return found


def hashes_for(judge: Any, split: str) -> frozenset[str]:
    """The training rows of the judge's classifiers that decide ``split``."""
    out: set[str] = set()
    for rows in declared(judge):
        if split in rows.splits:
            out |= rows.hashes
    return frozenset(out)


def trained_on(judges: Sequence[Any], frame: pl.DataFrame) -> pl.DataFrame:
    """Which rows of a ``gen_id, prompt, response`` frame each judge was trained on.

    Returns:
        ``gen_id, judge, trained_on`` (any classifier of the judge, whatever it decides).
    """
    hashes = row_hashes(frame["prompt"], frame["response"])
    parts = []
    for judge in judges:
        every = frozenset().union(*(r.hashes for r in declared(judge)))
        parts.append(pl.DataFrame({
            "gen_id": frame["gen_id"], "judge": [judge.id] * frame.height,
            "trained_on": [h in every for h in hashes]},
            schema={"gen_id": pl.String, "judge": pl.String, "trained_on": pl.Boolean}))
    return (pl.concat(parts) if parts else
            pl.DataFrame(schema={"gen_id": pl.String, "judge": pl.String,
                                 "trained_on": pl.Boolean}))


def cross_validated(judge: Any, split: str) -> list[dict[str, Any]]:
    """The held-out figures a judge's classifiers stored for ``split``."""
    return [dict(fig, component=rows.component) for rows in declared(judge)
            if split in rows.splits for fig in rows.cross_validated
            if fig.get("split") == split]
