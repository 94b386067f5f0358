"""Fill-mask: ranked candidates for every [MASK] in a text.

from masklm.infer.fill_mask import FillMask
fm = FillMask.load("runs/demo")
fm("the movie was [MASK] .", top_k=5)   # → [[{"token": "great", "token_id": ..., "score": 0.31}, ...]]

A one-sentence query reads every weight once, so its latency is the time to stream the model from memory:
`dtype="auto"` (the default) holds the weights in bfloat16 on CPUs and GPUs that multiply bf16 natively,
which halves the bytes (docs/benchmarks.md); scores then agree with float32 to about two decimals. Pass
`dtype="float32"` for exact float32 scores.
"""

from __future__ import annotations

import re
from pathlib import Path

import tokenizers
import torch
from torch import nn

from masklm.config import NO_LIMIT
from masklm.data.tokenizer import all_special_ids
from masklm.errors import UserError
from masklm.model.io import load_model
from masklm.utils import native_bf16

DTYPES = ("auto", "float32", "bfloat16")


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """ "auto" → bfloat16 where `device` has native bf16 arithmetic, else float32."""
    if dtype not in DTYPES:
        raise UserError(f"--dtype must be one of {', '.join(DTYPES)}, not {dtype!r}")
    if dtype == "auto":
        return torch.bfloat16 if native_bf16(device) else torch.float32
    return getattr(torch, dtype)


class FillMask:
    """A masked-LM model with its tokenizer, answering fill-mask queries (one text at a time, or batched by
    `masklm.serve` through `encode`, `masked_logits` and `candidates`)."""

    def __init__(self, model: nn.Module, tokenizer: tokenizers.Tokenizer, dtype: str = "auto") -> None:
        """Answer with `model`, which is put in eval mode and converted to `dtype` in place (no copy: pass a copy
        to keep a model that trains on in its own precision)."""
        self.dtype = resolve_dtype(dtype, next(model.parameters()).device)
        self.model = model.eval().to(self.dtype)
        self.tokenizer = tokenizer
        mask_id = tokenizer.token_to_id("[MASK]")
        if mask_id is None:
            raise UserError("the model's tokenizer has no [MASK] token; fill-mask and score need one")
        self.mask_id = mask_id
        # never proposed as an answer: [PAD], [CLS], [SEP], [MASK], [UNK] and other special tokens
        self.special_ids = torch.tensor(all_special_ids(tokenizer), dtype=torch.long)
        self.max_len = model.cfg.max_positions or NO_LIMIT

    @classmethod
    def load(cls, path: str | Path, dtype: str = "auto") -> FillMask:
        """A masklm run / model folder (an ELECTRA run answers with its generator) or a Hugging Face BERT folder
        with an MLM head; `dtype` auto is bfloat16 on a CPU or GPU with native bf16, else float32."""
        resolve_dtype(dtype, torch.device("cpu"))  # a bad dtype is refused before the model is read
        model, tokenizer, info = load_model(path, architecture="MaskedLM")
        if info.fresh_head:
            raise UserError(
                f"{path} has no trained masked-LM head ({info.fresh_head}); fill-mask and score need one"
            )
        return cls(model, tokenizer, dtype)

    def encode(self, text: str) -> dict[str, list[int]]:
        """The model inputs of `text` ({"input_ids", "token_type_ids"}); a UserError when it has no [MASK] or is
        longer than the model reads."""
        enc = self.tokenizer.encode(text)
        if self.mask_id not in enc.ids:
            # lower case, RoBERTa's <mask>, or full-width brackets (an East Asian keyboard's ［MASK］)
            spelled = re.search(r"[\[［]\s*mask\s*[\]］]|<mask>", text, re.IGNORECASE)
            hint = (
                f" ({spelled.group(0)!r} is not it: the mask token is [MASK], in capitals between ASCII brackets)"
                if spelled
                else ""
            )
            raise UserError(
                f'the text has no [MASK] token{hint}; write "[MASK]" where a word should be predicted'
            )
        if len(enc.ids) > self.max_len:
            raise UserError(
                f"the text is {len(enc.ids)} tokens long, above the model's limit of {self.max_len}; shorten it"
            )
        return {"input_ids": list(enc.ids), "token_type_ids": list(enc.type_ids)}

    def masked_logits(
        self, ids: torch.Tensor, attention_mask: torch.Tensor | None, types: torch.Tensor
    ) -> torch.Tensor:
        """(M, V) logits of the M [MASK] positions of a (B, T) batch, row by row, left to right."""
        labels = torch.where(ids == self.mask_id, ids, torch.full_like(ids, -100))
        return self.model(ids, attention_mask, types, labels)

    def candidates(self, logits: torch.Tensor, top_k: int) -> list[list[dict]]:
        """One ranked list of {token, token_id, score} per row of (M, V) mask logits: the model's probabilities
        (softmax over the whole vocabulary, as transformers' fill-mask pipeline gives them), special tokens left
        out of the ranking."""
        probs = logits.float().softmax(-1)
        specials = self.special_ids[self.special_ids < probs.shape[-1]]
        probs[:, specials] = -1.0
        top = probs.topk(min(top_k, probs.shape[-1] - len(specials)), dim=-1)
        return [
            [
                {"token": self.tokenizer.id_to_token(i), "token_id": i, "score": p}
                for p, i in zip(row_p, row_i)
            ]
            for row_p, row_i in zip(top.values.tolist(), top.indices.tolist())
        ]

    @torch.inference_mode()
    def __call__(self, text: str, top_k: int = 5) -> list[list[dict]]:
        """One ranked list of {token, token_id, score} per [MASK], in order of appearance."""
        if top_k < 1:
            raise UserError(f"--top-k must be at least 1, not {top_k}")
        feature = self.encode(text)
        ids, types = torch.tensor([feature["input_ids"]]), torch.tensor([feature["token_type_ids"]])
        return self.candidates(self.masked_logits(ids, None, types), top_k)
