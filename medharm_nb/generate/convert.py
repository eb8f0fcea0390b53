"""Convert a GGUF model once into a safetensors folder that transformers can quantize.

transformers reads a GGUF file by dequantizing it, but it can neither quantize such a model
with bitsandbytes nor ``save_pretrained`` it (the config carries a GGUF
``quantization_config``). So we save the dequantized state dict with safetensors, the config
without its ``quantization_config`` and the tokenizer, once, into a user cache folder keyed by
the GGUF file's hash: an edited or replaced file gets a new folder, never a stale one.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from medharm_nb.store import cache_root, file_sha256

MARKER = "medharm-convert.json"
"""Written last into a converted folder: its presence means the conversion finished."""


def converted_dir(folder: str | Path, gguf_file: str) -> Path:
    """Where the conversion of ``folder/gguf_file`` lives (whether it exists yet or not)."""
    path = Path(folder) / gguf_file
    return cache_root() / "converted" / f"{path.stem}-{file_sha256(path)[:16]}"


def is_converted(folder: str | Path, gguf_file: str) -> bool:
    """Whether ``folder/gguf_file`` exists and its conversion is already in the cache."""
    path = Path(folder) / gguf_file
    return path.is_file() and (converted_dir(folder, gguf_file) / MARKER).exists()


def check_convertible(folder: str | Path, gguf_file: str) -> None:
    """Fail now, with the reason, if ``folder/gguf_file`` cannot be converted.

    Reads only the GGUF metadata, so it is cheap enough to run before any work.

    Raises:
        FileNotFoundError: the GGUF file does not exist.
        ValueError: the ``gguf`` package is missing, or transformers does not know the
            file's architecture.
    """
    path = Path(folder) / gguf_file
    if not path.is_file():
        raise FileNotFoundError(f"GGUF file {path} does not exist (a GGUF on the hub must be "
                                f"downloaded to a local folder first)")
    try:
        import gguf  # noqa: F401 - transformers needs it to read GGUF files
    except ImportError as err:
        raise ValueError(f"converting {path} needs the gguf package: pip install gguf") from err
    from transformers import AutoConfig

    try:
        AutoConfig.from_pretrained(str(folder), gguf_file=gguf_file)
    except (ValueError, KeyError, OSError) as err:
        raise ValueError(f"{path} cannot be converted for quantization: {err}") from err


def convert_gguf(folder: str | Path, gguf_file: str) -> Path:
    """Return a safetensors folder equivalent to ``folder/gguf_file``, converting it once.

    The folder holds ``model.safetensors`` (float32, tied weights stored once), a
    ``config.json`` without ``quantization_config``, the generation config and the tokenizer
    (chat template included). Concurrent callers each write a private temporary folder and
    the first to finish wins, so a half-written folder is never used.

    Args:
        folder: The folder holding the GGUF file.
        gguf_file: The GGUF file's name inside ``folder``.
    """
    target = converted_dir(folder, gguf_file)
    if is_converted(folder, gguf_file):
        return target
    check_convertible(folder, gguf_file)
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        model = AutoModelForCausalLM.from_pretrained(
            str(folder), gguf_file=gguf_file, dtype=torch.float32)
        save_file(_untied_state_dict(model), tmp / "model.safetensors", metadata={"format": "pt"})
        config = model.config.to_dict()
        config.pop("quantization_config", None)
        (tmp / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
        model.generation_config.save_pretrained(tmp)
        AutoTokenizer.from_pretrained(str(folder), gguf_file=gguf_file).save_pretrained(tmp)
        gguf_path = Path(folder) / gguf_file
        (tmp / MARKER).write_text(json.dumps(
            {"gguf": str(gguf_path), "sha256": file_sha256(gguf_path)}, indent=2))
        try:
            tmp.rename(target)
        except OSError:  # another process finished first: keep its folder
            if not (target / MARKER).exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _untied_state_dict(model) -> dict:
    # Tied weights (lm_head = embed_tokens) share storage, which safetensors refuses; keep the
    # first name only (the embedding): from_pretrained ties them again from the config.
    seen, out = set(), {}
    for name, tensor in model.state_dict().items():
        if tensor.data_ptr() in seen:
            continue
        seen.add(tensor.data_ptr())
        out[name] = tensor.contiguous()
    return out
