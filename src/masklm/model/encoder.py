"""The bidirectional Transformer encoder, top to bottom in one file.

    embeddings (word + position + token type → LayerNorm → dropout)
    → projection to the hidden size (only when embedding_size differs from hidden_size, as in ELECTRA)
    → num_hidden_layers × Block (self-attention, feed-forward; post- or pre-LayerNorm)
    → final LayerNorm (pre-LN only)

With the default ModelConfig this is BERT exactly: learned absolute positions, token-type embeddings,
post-LayerNorm, GELU, biases everywhere; its parameters map one-to-one onto Hugging Face's `BertModel` (see
`masklm.model.hf`). The modern switches (`norm="pre"`, `position="rotary"`, `ffn="geglu"`, `bias=False`) change
only the lines that mention them. Attention runs through `torch.nn.functional.scaled_dot_product_attention`,
except in CPU training with attention dropout or in bf16, where a written-out softmax(QKᵀ)V is faster
(`_attention_written_out`).

Shapes in comments: B batch, T sequence length, H hidden size, N heads, D head size (H / N), I intermediate size,
E embedding width (`ModelConfig.embedding_width`: H unless embedding_size is set).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from masklm.config import ModelConfig


def activation(name: str):
    if name == "gelu":
        return F.gelu
    if name == "gelu_tanh":
        return lambda x: F.gelu(x, approximate="tanh")
    if name == "relu":
        return F.relu
    raise ValueError(f"unknown activation {name!r}")


class Embeddings(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        H = cfg.embedding_width  # E
        # Rows padded to a multiple of model.pad_vocab_multiple (64) for fast matmuls; ids never change, padded
        # rows are never looked up.
        self.word = nn.Embedding(cfg.padded_vocab_size, H, padding_idx=cfg.pad_token_id)
        self.position = nn.Embedding(cfg.max_position_embeddings, H) if cfg.position == "absolute" else None
        self.token_type = nn.Embedding(cfg.type_vocab_size, H) if cfg.type_vocab_size > 0 else None
        self.norm = nn.LayerNorm(H, eps=cfg.layer_norm_eps, bias=cfg.bias)
        self.dropout = nn.Dropout(cfg.hidden_dropout_prob)

    def forward(
        self,
        input_ids: torch.Tensor,
        token_type_ids: torch.Tensor | None,
        position_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """(B, T) → (B, T, E); `position_ids` (B, T): each entry's position, where it is not its index in the row."""
        T = input_ids.shape[1]
        x = self.word(input_ids)  # (B, T, E)
        if self.position is not None:
            # (T, E) broadcast over B
            x = x + (self.position.weight[:T] if position_ids is None else self.position(position_ids))
        if self.token_type is not None:
            # one segment row (type_vocab_size 1): every segment reads it, and a pair is told apart by [SEP] alone
            if token_type_ids is None or self.token_type.num_embeddings == 1:
                x = x + self.token_type.weight[0]
            else:
                x = x + self.token_type(token_type_ids)
        return self.dropout(self.norm(x))


class Rotary(nn.Module):
    """Rotary position embedding (RoFormer): rotate pairs of query/key channels by position-dependent angles."""

    def __init__(self, head_size: int, theta: float) -> None:
        super().__init__()
        self.head_size, self.theta = head_size, theta

    def forward(
        self, q: torch.Tensor, k: torch.Tensor, queries: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """q and k (B, N, T, D) rotated by their positions; with `queries` (B,), q is (B, N, 1, D), one query
        per row at that position."""
        # The frequencies are computed here in float32 rather than kept as a buffer: `model.to(torch.bfloat16)`
        # (fill-mask's bf16 weights) would round a buffer and shift the angles of distant positions by radians.
        D = self.head_size
        inv_freq = 1.0 / (self.theta ** (torch.arange(0, D, 2, device=q.device, dtype=torch.float32) / D))
        T = k.shape[-2]
        angles = torch.outer(torch.arange(T, device=q.device, dtype=torch.float32), inv_freq)  # (T, D/2)
        cos, sin = angles.cos().to(q.dtype), angles.sin().to(q.dtype)
        if queries is None:
            return _rotate(q, cos, sin), _rotate(k, cos, sin)
        at = (slice(None), None, None)  # (B, D/2) → (B, 1, 1, D/2), against q's (B, N, 1, D/2)
        return _rotate(q, cos[queries][at], sin[queries][at]), _rotate(k, cos, sin)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Channel i paired with channel i + D/2, the pair rotated by its angle: (a, b) → (a cos − b sin, b cos + a sin).

    Written on the two halves rather than as x cos + rotate_half(x) sin (the same roundings, so the same numbers):
    under torch.compile (inductor, CPU, bf16, torch 2.13) the rotate_half form gave the keys non-finite gradients
    (tests/test_compile.py).
    """
    a, b = x.chunk(2, dim=-1)
    return torch.cat([a * cos - b * sin, b * cos + a * sin], dim=-1)


class SelfAttention(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        H = cfg.hidden_size
        self.num_heads = cfg.num_attention_heads
        self.qkv = nn.Linear(H, 3 * H, bias=cfg.bias)  # one matmul for query, key and value
        self.out = nn.Linear(H, H, bias=cfg.bias)
        self.dropout_p = cfg.attention_probs_dropout_prob
        self.rotary = Rotary(H // self.num_heads, cfg.rope_theta) if cfg.position == "rotary" else None

    def forward(
        self,
        x: torch.Tensor,
        attn_mask: torch.Tensor | None,
        queries: torch.Tensor | None = None,
        qkv: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """(B, T, H) → (B, T, H). With `queries` (B,), only each row's query at that position, (B, 1, H): the
        other positions' queries are not projected. `qkv` (B, T, 3H): x's projections, computed by the caller
        (then x is read for its shape only)."""
        B, T, H = x.shape
        N = self.num_heads
        if queries is not None and qkv is None:
            w, b = self.qkv.weight, self.qkv.bias  # rows: query, key, value
            q = F.linear(x[torch.arange(B, device=x.device), queries], w[:H], None if b is None else b[:H])
            q = q.view(B, N, 1, H // N)
            kv = F.linear(x, w[H:], None if b is None else b[H:])  # (B, T, 2H)
            k, v = kv.view(B, T, 2, N, H // N).permute(2, 0, 3, 1, 4).unbind(0)  # 2 × (B, N, T, D)
        else:
            qkv = self.qkv(x) if qkv is None else qkv
            # unbind, not qkv[0], qkv[1], qkv[2]: its backward is one stack instead of three zero-filled copies
            q, k, v = qkv.view(B, T, 3, N, H // N).permute(2, 0, 3, 1, 4).unbind(0)  # 3 × (B, N, T, D)
            if queries is not None:
                q = q[torch.arange(B, device=q.device), :, queries].unsqueeze(2)  # (B, N, 1, D)
        if self.rotary is not None:
            q, k = self.rotary(q, k, queries)
        T = q.shape[2]
        p = self.dropout_p if self.training else 0.0
        if x.device.type == "cpu" and self.training and (p > 0 or q.dtype != torch.float32):
            y = _attention_written_out(q, k, v, attn_mask, p)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=p)  # (B, N, T, D)
        return self.out(y.transpose(1, 2).reshape(B, T, H))


def set_attention_dropout(model: nn.Module, p: float) -> int:
    """Dropout on the attention weights of every SelfAttention in `model` set to `p` for what follows (the
    model's config keeps its attention_probs_dropout_prob, so a saved model is unchanged); returns how many."""
    layers = [m for m in model.modules() if isinstance(m, SelfAttention)]
    for layer in layers:
        layer.dropout_p = p
    return len(layers)


def _attention_written_out(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_mask: torch.Tensor | None, p: float
) -> torch.Tensor:
    """dropout(softmax(q kᵀ / √D)) v: what SDPA computes, written out for training on CPU.

    Measured on a 2-core AMD EPYC (L4/H256, batch 32, forward + backward): with dropout, SDPA has no fused CPU
    kernel and its math fallback upcasts bf16 to float32 for both matmuls; under bf16 without dropout, its
    flash kernel is slower than two bf16 matmuls at these lengths. Here the matmuls stay in the input
    precision and the softmax runs in float32: ~20% faster steps under bf16, the same speed in float32 with
    dropout. The dropout draws from the default generator like F.dropout. Float32 without dropout, inference
    and GPUs keep SDPA.
    """
    scores = (q * q.shape[-1] ** -0.5) @ k.transpose(-1, -2)  # (B, N, T, T)
    if attn_mask is not None:
        scores = scores.masked_fill(~attn_mask, float("-inf"))
    probs = scores.softmax(-1, dtype=torch.float32)
    if p > 0 and v.dtype != torch.float32:
        return _dropped_attention(probs.to(v.dtype), v, p)
    if p > 0:
        probs = F.dropout(probs, p, training=True)
    return probs.to(v.dtype) @ v  # (B, N, T, D)


def _dropped_attention(probs: torch.Tensor, v: torch.Tensor, p: float) -> torch.Tensor:
    """dropout(probs) v for low-precision probs, the mask drawn as 15-bit integers: (B, N, T, D).

    In a profile of a bf16 fine-tuning step at 256 tokens on CPU, the attention dropout's mask was the largest
    single operator: F.dropout draws it with bernoulli_ in float32 over (B, N, T, T) (docs/profile.md,
    "Fine-tuning at 256 tokens"). Here the mask is random_ on int16 (several times cheaper to draw), applied to
    the bf16 probabilities, and the 1 / (1 - p) scale goes to the smaller output; measured on a loaded machine,
    7% less CPU per step, within its noise. An entry is dropped with probability round(p * 2^15) / 2^15 (p to
    within 2e-5). Float32 keeps F.dropout, whose draws equal transformers' (tests/test_hf.py).
    """
    drop = torch.empty(probs.shape, dtype=torch.int16, device=probs.device).random_(0, 1 << 15)
    drop = drop < round(p * (1 << 15))
    return (probs.masked_fill(drop, 0.0) @ v) * (1.0 / (1.0 - p))


class FeedForward(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        H, Inter = cfg.hidden_size, cfg.intermediate_size
        self.geglu = cfg.ffn == "geglu"
        self.up = nn.Linear(H, 2 * Inter if self.geglu else Inter, bias=cfg.bias)
        self.down = nn.Linear(Inter, H, bias=cfg.bias)
        self.act = activation(cfg.hidden_act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.up(x)  # (B, T, I) or (B, T, 2I)
        if self.geglu:
            gate, value = h.chunk(2, dim=-1)
            h = self.act(gate) * value
        else:
            h = self.act(h)
        return self.down(h)  # (B, T, H)


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        H = cfg.hidden_size
        self.pre_norm = cfg.norm == "pre"
        self.attn = SelfAttention(cfg)
        self.attn_norm = nn.LayerNorm(H, eps=cfg.layer_norm_eps, bias=cfg.bias)
        self.ffn = FeedForward(cfg)
        self.ffn_norm = nn.LayerNorm(H, eps=cfg.layer_norm_eps, bias=cfg.bias)
        self.dropout = nn.Dropout(cfg.hidden_dropout_prob)

    def forward(
        self,
        x: torch.Tensor,
        attn_mask: torch.Tensor | None,
        queries: torch.Tensor | None = None,
        qkv: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """(B, T, H) → (B, T, H); with `queries` (B,), only the output at that position of each row, (B, 1, H):
        every position is still a key, but attention, feed-forward and norms run for one query per row.
        `qkv` (B, T, 3H): the attention's projections of x (`projections`), computed by the caller."""
        # the residual stream of the positions computed
        residual = (
            x if queries is None else x[torch.arange(x.shape[0], device=x.device), queries].unsqueeze(1)
        )
        if self.pre_norm:
            h = x if qkv is not None else self.attn_norm(x)  # what attention projects (read for its shape)
            x = residual + self.dropout(self.attn(h, attn_mask, queries, qkv))
            return x + self.dropout(self.ffn(self.ffn_norm(x)))
        x = self.attn_norm(residual + self.dropout(self.attn(x, attn_mask, queries, qkv)))
        return self.ffn_norm(x + self.dropout(self.ffn(x)))

    def projections(self, x: torch.Tensor) -> torch.Tensor:
        """(..., H) → (..., 3H): the query, key and value projections this block's attention makes of x."""
        return self.attn.qkv(self.attn_norm(x) if self.pre_norm else x)


class Encoder(nn.Module):
    """input ids (B, T) → contextual hidden states (B, T, H).

    `shared_embeddings`: another encoder's embedding module to read instead of owning one (ELECTRA's generator
    reads its discriminator's). It is held, not registered: it is not among this module's parameters, and its
    owner saves, moves and shards it.
    """

    def __init__(self, cfg: ModelConfig, shared_embeddings: Embeddings | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        if shared_embeddings is None:
            self.embeddings: Embeddings | None = Embeddings(cfg)
            self._shared: tuple[Embeddings, ...] = ()
        else:
            self.embeddings = None
            self._shared = (shared_embeddings,)  # a tuple, so that nn.Module does not register it
        E, H = cfg.embedding_width, cfg.hidden_size
        self.embed_proj = nn.Linear(E, H, bias=cfg.bias) if E != H else None
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.num_hidden_layers))
        self.final_norm = (
            nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps, bias=cfg.bias)
            if cfg.norm == "pre"
            else None
        )

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        positions: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Hidden states (B, T, H); with `positions` (B,), only the one at that position of each row, (B, H).

        `positions` is for callers that read one position per row (pseudo-log-likelihood scoring): the last
        layer then runs its queries, feed-forward and norms there only, about 3/4 of that layer's work saved.
        Outside training (and without segments), such a batch's first layer also projects each distinct
        (token, position) once (`_distinct_first_inputs`): the masked copies of a sentence share all but one."""
        qkv = None
        if positions is not None and token_type_ids is None and not self.training and len(self.layers) > 1:
            x, qkv = self._distinct_first_inputs(input_ids)
        else:
            x = self.input_embeddings(input_ids, token_type_ids)  # (B, T, E)
            if self.embed_proj is not None:
                x = self.embed_proj(x)  # (B, T, H)
        # (B, 1, 1, T): each query may look at every real key; padded keys are hidden. Callers pass no mask for
        # batches without padding (packed pretraining), which lets SDPA pick its fastest kernel.
        # skipping the mask needs a look at the data: only in eager training (export and compile trace the graph)
        attn_mask = _padding_mask(attention_mask, self.training and not torch.compiler.is_compiling())
        last = len(self.layers) - 1
        for n, layer in enumerate(self.layers):
            x = layer(x, attn_mask, positions if n == last else None, qkv if n == 0 else None)
        if positions is not None:  # (B, H); an encoder without layers reads the embeddings there
            x = x.squeeze(1) if self.layers else x[torch.arange(x.shape[0], device=x.device), positions]
        if self.final_norm is not None:
            x = self.final_norm(x)
        return x

    def _distinct_first_inputs(self, input_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The first layer's input (B, T, H) and its query/key/value projections (B, T, 3H), each computed once
        per distinct (token, position) in the batch and gathered.

        In a batch of masked copies (pseudo-log-likelihood scoring) the n copies of an n-token sentence differ
        only where each is masked: about 2n distinct entries among n² positions, so the embeddings and the first
        projections, 1/4 of the first layer's multiply-adds, cost about 2/n of their price. Later layers differ
        everywhere: attention mixes the masked position into every other one."""
        T = input_ids.shape[1]
        position = torch.arange(T, device=input_ids.device)
        distinct, where = torch.unique(input_ids * T + position, return_inverse=True)  # (U,), (B, T)
        x = self.input_embeddings((distinct // T)[None], None, (distinct % T)[None])  # (1, U, E)
        if self.embed_proj is not None:
            x = self.embed_proj(x)  # (1, U, H)
        return x[0][where], self.layers[0].projections(x[0])[where]

    @property
    def input_embeddings(self) -> Embeddings:
        """The embedding module this encoder reads: its own, or the shared one."""
        return self.embeddings if self.embeddings is not None else self._shared[0]


def init_weights(module: nn.Module, std: float) -> None:
    """BERT's initialisation: normal(0, std) weights, zero biases, unit LayerNorms, a zero padding row."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, std=std)
            if m.padding_idx is not None:
                with torch.no_grad():
                    m.weight[m.padding_idx].zero_()
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def _padding_mask(attention_mask: torch.Tensor | None, drop_if_full: bool = False) -> torch.Tensor | None:
    """(B, 1, 1, T) bool, True on real keys. With `drop_if_full`, None where nothing is padded (on CPU, where
    asking is free: long documents fill every window, and each training layer then skips masking a (B, N, T, T)
    tensor, forward and back)."""
    if attention_mask is None:
        return None
    if drop_if_full and attention_mask.device.type == "cpu" and bool(attention_mask.all()):
        return None
    return attention_mask.bool()[:, None, None, :]
