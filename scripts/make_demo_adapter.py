"""Re-make the demo's fine-tune: a LoRA adapter for the embedded SmolLM2-135M-Instruct, trained
on the benign clinical how-to pairs in data/clinical_qa/ (seeded, one CPU thread).

    python scripts/make_demo_adapter.py            # writes data/adapters/smollm2-clinical-lora
    python scripts/make_demo_adapter.py --check    # trains into a temporary folder and checks
                                                   # its weights equal the shipped adapter's

The same torch build on one thread gives the same adapter bit for bit; another torch version,
CPU type or thread count can round differently and give a slightly different one.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = "data/clinical_qa/clinical_qa.jsonl"
OUT = "data/adapters/smollm2-clinical-lora"
BASE = "smollm2-135m"


def demo_config():
    """The demo adapter's hyper-parameters: small rank on the attention projections (a few
    MB), one pass over the data."""
    from medharm_nb.settings import FinetuneConfig

    return FinetuneConfig(
        rank=8, alpha=16, dropout=0.05, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
        learning_rate=4e-4, epochs=1, max_length=512, batch_size=4, seed=0,
        quantization="none", eval_examples=32)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=OUT, help=f"adapter folder (default {OUT})")
    parser.add_argument("--check", action="store_true",
                        help="train into a temporary folder; compare with the shipped adapter")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    args = parser.parse_args()
    os.chdir(REPO)  # the card records the data path relative to the repository
    sys.path.insert(0, str(REPO))
    import torch

    from medharm_nb.adapter_card import read_card
    from medharm_nb.finetune import finetune

    torch.set_num_threads(args.threads)
    began = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / Path(OUT).name if args.check else Path(args.out)
        card = finetune(BASE, DATA, out, demo_config(), overwrite=True)
        seconds = time.perf_counter() - began
        print(f"{out}: {card['training']['steps']} steps, loss {card['loss']['before']} -> "
              f"{card['loss']['after']}, adapter SHA-256 {card['adapter_sha256']}, "
              f"{seconds:.0f} s with {args.threads} thread(s)")
        if args.check:
            shipped = read_card(REPO / OUT)["adapter_sha256"]
            same = shipped == card["adapter_sha256"]
            print(f"shipped adapter {shipped}: {'identical' if same else 'DIFFERENT'}")
            return 0 if same else 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
