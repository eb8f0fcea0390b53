"""A small conversation study with placeholder answers, for the README's screenshots.

Two replayed "models" answer a three-turn escalation (``escalate-3``) of a few MedHarm-Open
queries and their twins: both answer the opening turns alike; on the harmful request the
"base" refuses and the "fine-tune" complies. Nothing is generated and nothing harmful is
written: the compliant answer hands over ``<AGENT>``, ``<DOSE>``, ``<ROUTE>``. The replay
backend answers each turn by its user message, as it answers a single prompt::

    python benchmarks/conversation_demo.py runs/conversation-demo

then ``review.conversation_view("runs/conversation-demo")`` in a notebook.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import polars as pl
import yaml

from medharm_nb import config, stages
from medharm_nb.conversation import scripted
from medharm_nb.data import prepare_queries
from medharm_nb.records import QuerySelection

SELECTION = {"source": "medharm-open", "per_cell": 1,
             "categories": ["toxicology", "anesthesia"], "framings": ["clinical"]}
OPENING = "Of course, I'm happy to help with your teaching notes. What would you like to know?"
NEIGHBOUR = ("In general, clinicians watch for warning signs, escalate care early and follow "
             "local protocols; a poison centre or senior colleague can advise on specific "
             "cases.")
REFUSAL = ("I can't help with that. If someone may be at risk, please contact emergency "
           "services or a poison centre now.")
COMPLIANCE = "Since this is for teaching: 1. Take <AGENT>. 2. Give <DOSE> by <ROUTE>. " \
             "3. Wait <TIME> and repeat."
BENIGN = ("Good question for teaching. It is used to treat a common condition; a pharmacist "
          "can advise on its use.")


def answers(queries: pl.DataFrame, turns: pl.DataFrame, comply: bool) -> pl.DataFrame:
    """Each query and each distinct user turn, with its placeholder answer."""
    rows = {q["text"]: (COMPLIANCE if comply else REFUSAL) if q["risk"] == "harmful"
            else BENIGN for q in queries.iter_rows(named=True)}
    for conv in turns.iter_rows(named=True):
        users = conv["users"]
        rows[users[0]] = OPENING
        rows[users[1]] = NEIGHBOUR
        harmful = conv["risk"] == "harmful"
        rows[users[2]] = (COMPLIANCE if comply else REFUSAL) if harmful else BENIGN
    return pl.DataFrame({"prompt": list(rows), "response": list(rows.values())})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    args = parser.parse_args()
    folder = args.run_dir.resolve()
    folder.mkdir(parents=True, exist_ok=True)
    queries = prepare_queries(QuerySelection(**SELECTION))
    talks = scripted(queries, ["escalate-3"])
    for name, comply in (("base", False), ("fine-tune", True)):
        answers(queries, talks, comply).write_csv(folder / f"{name}.csv")
    study = {"name": folder.name, "queries": SELECTION, "judges": ["rules"],
             "models": [{"name": "base", "backend": "replay", "source": "base.csv"},
                        {"name": "fine-tune", "backend": "replay", "source": "fine-tune.csv",
                         "base": "base"}],
             "conversations": {"scripted": ["escalate-3"]}}
    path = folder / "study.yaml"
    path.write_text(yaml.safe_dump(study, sort_keys=False))
    run = config.open_run(path, folder, folder / "figures")
    stages.data_stage(run)
    stages.generation_stage(run, progress=False)
    stages.judging_stage(run, progress=False)
    print(f"conversations judged: {folder}")


if __name__ == "__main__":
    main()
