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

from pathlib import Path

import tokenizers
import torch
from torch import nn

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
    def __init__(self, model: nn.Module, tokenizer: tokenizers.Tokenizer, dtype: str = "auto") -> None:
        self.dtype = resolve_dtype(dtype, next(model.parameters()).device)
        self.model = model.eval().to(self.dtype)
        self.tokenizer = tokenizer
        mask_id = tokenizer.token_to_id("[MASK]")
        if mask_id is None:
            raise UserError("the model's tokenizer has no [MASK] token; fill-mask needs one")
        self.mask_id = mask_id
        self.max_len = model.cfg.max_position_embeddings if model.cfg.position == "absolute" else 1 << 30

    @classmethod
    def load(cls, path: str | Path, dtype: str = "auto") -> FillMask:
        resolve_dtype(dtype, torch.device("cpu"))  # a bad dtype is refused before the model is read
        model, tokenizer, info = load_model(path, architecture="MaskedLM")
        if info.notes:
            raise UserError(f"{path} has no trained masked-LM head ({info.notes[0]}); fill-mask needs one")
        return cls(model, tokenizer, dtype)

    @torch.inference_mode()
    def __call__(self, text: str, top_k: int = 5) -> list[list[dict]]:
        """One ranked list of {token, token_id, score} per [MASK], in order of appearance."""
        if top_k < 1:
            raise UserError(f"--top-k must be at least 1, not {top_k}")
        enc = self.tokenizer.encode(text)
        ids = torch.tensor([enc.ids])
        positions = (ids[0] == self.mask_id).nonzero().flatten()
        if positions.numel() == 0:
            raise UserError('the text has no [MASK] token; write "[MASK]" where a word should be predicted')
        if ids.shape[1] > self.max_len:
            raise UserError(
                f"the text is {ids.shape[1]} tokens long, above the model's limit of {self.max_len}; shorten it"
            )
        types = torch.tensor([enc.type_ids])
        labels = torch.full_like(ids, -100)
        labels[0, positions] = ids[0, positions]
        logits = self.model(ids, None, types, labels)  # (M, V): only the masked positions
        probs = logits.float().softmax(-1)
        k = min(top_k, probs.shape[-1])
        top = probs.topk(k, dim=-1)
        out = []
        for row_p, row_i in zip(top.values.tolist(), top.indices.tolist()):
            out.append(
                [
                    {"token": self.tokenizer.id_to_token(i), "token_id": i, "score": p}
                    for p, i in zip(row_p, row_i)
                ]
            )
        return out
