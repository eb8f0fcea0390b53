"""The card of a fine-tuned adapter: ``card.json`` for programs, ``README.md`` and
``loss.png`` for people (written by ``finetune``, read back with ``read_card``).

``card.json`` holds the base spec and its weights' SHA-256, the data source and its SHA-256
(of the file, and of the pairs as read), every hyper-parameter and the seed, the training
device and quantization, the loss per step and before/after, the adapter's own SHA-256,
package versions and the git commit.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import polars as pl

from medharm_nb import manifest, plots
from medharm_nb.generate import model_files
from medharm_nb.records import ModelSpec
from medharm_nb.settings import FinetuneConfig
from medharm_nb.store import file_sha256

CARD_VERSION = 1
"""Written into every ``card.json``; bump it when a field changes meaning."""
CARD_FILE = "card.json"
SMOOTHING = 8
"""Steps in the running mean drawn over the per-step loss."""


def read_card(folder: str | Path) -> dict[str, Any]:
    """The card of an adapter folder.

    Raises:
        FileNotFoundError: the folder holds no finished adapter (no ``card.json``).
    """
    path = Path(folder) / CARD_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist (not an adapter written by finetune, "
                                f"or one that did not finish)")
    return json.loads(path.read_text(encoding="utf-8"))


def build_card(spec: ModelSpec, data: str | Path, pairs: pl.DataFrame, config: FinetuneConfig,
               quantization: str, model, counts: dict[str, int], losses: list[float],
               before_after: tuple[float | None, float | None], out: Path,
               seconds: dict[str, float]) -> dict[str, Any]:
    """What ``card.json`` holds for an adapter just trained and saved in ``out``.

    Args:
        spec: The base model's spec (system prompt and chat template included).
        data: The data source as given.
        pairs: The prompt/response pairs read from it.
        config: The hyper-parameters.
        quantization: The base weights' quantization while training.
        model: The trained peft model.
        counts: Pairs used, truncated and dropped (``finetune.format_examples``).
        losses: Loss per optimizer step.
        before_after: Mean answer-token loss on the first examples before and after.
        out: The adapter folder (its weights are hashed).
        seconds: Wall time of loading, training and in total.
    """
    before, after = before_after
    data_path = Path(str(data))
    table = json.dumps(pairs.select("prompt", "response").rows(), ensure_ascii=False)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    versions = manifest.versions()
    for name in ("peft", "bitsandbytes", "accelerate"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {
        "card_version": CARD_VERSION,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "base": {"spec": spec.key(), "name": spec.name,
                 "files": {f.name: file_sha256(f) for f in model_files(spec)},
                 "revision": getattr(model.config, "_commit_hash", None)},
        "data": {"source": str(data),
                 "sha256": file_sha256(data_path) if data_path.is_file() else None,
                 "table_sha256": hashlib.sha256(table.encode("utf-8")).hexdigest(),
                 "n_pairs": pairs.height, "n_used": counts["used"],
                 "n_truncated": counts["truncated"], "n_dropped": counts["dropped"]},
        "hyperparameters": config.model_dump(),
        "seed": config.seed,
        "training": {"quantization": quantization, "device": manifest.device(),
                     "steps": len(losses), "trainable_parameters": trainable,
                     "seconds": {k: round(v, 1) for k, v in seconds.items()}},
        "loss": {"per_step": [round(x, 5) for x in losses],
                 "before": None if before is None else round(before, 5),
                 "after": None if after is None else round(after, 5),
                 "measured_on": min(config.eval_examples, counts["used"])},
        "adapter_sha256": file_sha256(out / "adapter_model.safetensors"),
        "versions": versions,
        "git": manifest.git_state(manifest.REPO_DIR),
    }


def write_card(out: str | Path, card: dict[str, Any]) -> None:
    """Write ``README.md`` and ``loss.png`` for people, then ``card.json`` (last)."""
    out = Path(out)
    plots.loss_curve(loss_table(card)).save(out / "loss.png", scale_factor=1)
    (out / "README.md").write_text(card_readme(card, out.name), encoding="utf-8")
    (out / CARD_FILE).write_text(json.dumps(card, indent=2, ensure_ascii=False) + "\n",
                                 encoding="utf-8")


def loss_table(card: dict[str, Any], window: int = SMOOTHING) -> pl.DataFrame:
    """A card's loss per step (``step``, ``loss``) with its running mean (``smoothed``) over
    ``window`` steps: one step's loss depends on which examples it drew, the mean shows the
    trend."""
    losses = card["loss"]["per_step"]
    return pl.DataFrame({"step": range(1, len(losses) + 1), "loss": losses}).with_columns(
        pl.col("loss").rolling_mean(window_size=window, min_samples=1).alias("smoothed"))


def card_readme(card: dict[str, Any], folder: str) -> str:
    """The card as Markdown: what was trained on what, how, and the loss curve."""
    hp, data, base, loss = card["hyperparameters"], card["data"], card["base"], card["loss"]
    spec = base["spec"]
    files = ", ".join(f"`{name}` (SHA-256 `{sha[:16]}…`)" for name, sha in base["files"].items())
    use = [f"    source: {spec['source']}", f"    adapter: path/to/{folder}"]
    if spec.get("system_prompt"):
        use.append(f"    system_prompt: {json.dumps(spec['system_prompt'])}")
    steps = card["training"]["steps"]
    values = ", ".join(f"{x:.3f}" for x in loss["per_step"])
    gguf = f" (GGUF {spec['gguf_file']})" if spec.get("gguf_file") else ""
    files = files or f"hub id, revision {base['revision']}"
    system = (json.dumps(spec["system_prompt"]) if spec.get("system_prompt")
              else "none (the template's default)")
    data_sha = (data["sha256"] or data["table_sha256"])[:16]
    length = f"{hp['epochs']} epoch(s)" if hp["max_steps"] is None else "max_steps"
    before, after = (("n/a" if x is None else f"{x:.3f}") for x in (loss["before"], loss["after"]))
    lines = [
        f"# LoRA adapter `{folder}`", "",
        f"Trained by `medharm-nb finetune` ({card['created']}); every number below is in "
        f"[card.json](card.json).", "",
        "| | |", "| --- | --- |",
        f"| base model | `{spec['source']}`{gguf}; files: {files} |",
        f"| system prompt | {system} |",
        f"| data | `{data['source']}` (SHA-256 `{data_sha}…`): {data['n_used']} of "
        f"{data['n_pairs']} pairs used, {data['n_truncated']} answers cut at "
        f"{hp['max_length']} tokens, {data['n_dropped']} dropped |",
        f"| LoRA | r={hp['rank']}, alpha={hp['alpha']:g}, dropout={hp['dropout']:g} on "
        f"{', '.join(hp['target_modules'])}; {card['training']['trainable_parameters']:,} "
        f"trainable parameters |",
        f"| training | {steps} steps ({length}), batch {hp['batch_size']} x "
        f"{hp['grad_accum']}, lr {hp['learning_rate']:g} "
        f"(warmup {hp['warmup_ratio']:g}, linear decay), seed {hp['seed']}, base weights "
        f"{card['training']['quantization']}, {card['training']['device']}, "
        f"{card['training']['seconds']['total']:.0f} s |",
        f"| loss on answer tokens ({loss['measured_on']} examples) | before {before} → "
        f"after {after} |", "",
        "Use it in a run config (the spec needs no chat template: the adapter's tokenizer, "
        "if it ships one, carries it):", "", "```yaml", "models:",
        f"  - name: {folder}", *use, "```", "",
        "## Training loss", "", "![Training loss per optimizer step](loss.png)", "",
        f"Per step: {values}.", ""]
    return "\n".join(lines)
