"""Features from a batched forward pass through the base model.

Sequences are sorted by length and cut into batches (little padding), run with an attention
mask and explicit position ids (so neither the padding side nor a sequence's batch-mates
change its feature), and pooled per layer: `last` = hidden state at the last real token,
`mean` = average over real tokens. `extract_features` yields one batch at a time so the
caller can stream features into covariance accumulators; nothing holds all of them.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from geowh.errors import CheckpointError, InputError
from geowh.progress import Event, Progress, silent

POOLINGS = ("last", "mean")
# A CPU batch's size, in elements of its residual stream (tokens × d), when no batch size is
# given: 2**19 (2 MiB in fp32; the MLP's 4 × d activations 8 MiB) keeps a layer's activations
# in the caches between one matrix product and the next. The products themselves run at the
# same rate from ~512 rows up, so larger batches only lose: at low load, d = 256 ran 13.9k
# tokens/s at 2,048 tokens per batch against 8.9k at 32,768 (the authors' one-at-a-time loop:
# 11.6k), and Pythia-410M's shape 251 against 204 tokens/s at 512 against 32,768 (bench/extract.py,
# docs/scale.md). So d = 256 gets 2,048 tokens per batch, d = 1,024 512, d = 16 32,768.
CPU_BATCH_ELEMENTS = 2**19
# Upper bound on tokens per batch on a GPU (memory permitting).
GPU_TOKEN_BUDGET = 262_144
# Where base models keep their final norm (GPT-NeoX, Llama/OLMo-2, GPT-2): the module whose
# output is the last hidden state, run in fp32 when the model is not (`fp32_final_norm`).
FINAL_NORMS = ("final_layer_norm", "norm", "ln_f")


@dataclass(frozen=True)
class Extracted:
    """One batch's output."""

    indices: list[int]
    """Positions of these sequences in the probe."""
    features: dict
    """{(layer, pooling): (batch, d) tensor on the device}."""
    nll: float = 0.0
    """With a head: summed next-token negative log-likelihood (nats) over the batch's real tokens."""
    predicted: int = 0
    """With a head: number of tokens predicted (real tokens that follow a real token)."""


@dataclass(frozen=True)
class Batch:
    indices: list[int]
    """Positions of these sequences in the probe."""
    input_ids: Any  # (batch, seq) long
    attention_mask: Any  # (batch, seq) long, 1 = real token
    position_ids: Any  # (batch, seq) long, 0 at each sequence's first real token


def parse_layers(spec: str | Sequence[int], n_layers: int) -> list[int]:
    """`last`, `all` or a list such as `0,6,12` (negative counts from the end) → hidden_states indices."""
    if isinstance(spec, str):
        spec = spec.strip()
        if spec == "last":
            return [n_layers]
        if spec == "all":
            return list(range(n_layers + 1))
        try:
            wanted = [int(s) for s in spec.split(",") if s.strip()]
        except ValueError:
            raise InputError(f"--layers {spec}: use last, all or a list of indices such as 0,6,12") from None
    else:
        wanted = [int(s) for s in spec]
    layers = []
    for layer in wanted:
        index = layer + n_layers + 1 if layer < 0 else layer
        if not 0 <= index <= n_layers:
            raise InputError(
                f"--layers: {layer} is out of range for a model with {n_layers} layers "
                f"(0 = embeddings … {n_layers} = last, after the final norm)"
            )
        if index not in layers:
            layers.append(index)
    if not layers:
        raise InputError("--layers selects no layer")
    return sorted(layers)


def _non_finite_cause(dtype) -> str:
    """What NaN/inf features mean in `dtype`: only float16's narrow range overflows in a healthy model."""
    import torch

    if dtype == torch.float16:
        return "float16 overflow is the usual cause; rerun with --dtype bfloat16 or float32"
    return (
        "this dtype does not overflow on a healthy model, so the checkpoint itself holds NaN/inf "
        "(diverged training or corrupt weights); check it, or leave it out with --checkpoints"
    )


def parse_poolings(spec: str | Sequence[str]) -> list[str]:
    names = [s.strip() for s in spec.split(",")] if isinstance(spec, str) else list(spec)
    for name in names:
        if name not in POOLINGS:
            raise InputError(f"--pooling {name}: use {' or '.join(POOLINGS)} (or both: last,mean)")
    return list(dict.fromkeys(names))


def plan_batches(lengths: Sequence[int], *, batch_size: int | None = None, token_budget: int) -> list[list[int]]:
    """Indices grouped into batches, longest sequences first (an out-of-memory shows at once).

    With `batch_size`, every batch has that many sequences; otherwise a batch holds as many
    as fit `token_budget` padded tokens.
    """
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    batches: list[list[int]] = []
    current: list[int] = []
    for i in order:
        width = lengths[current[0]] if current else lengths[i]
        full = len(current) >= batch_size if batch_size else (len(current) + 1) * width > token_budget
        if current and full:
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches


def collate(ids: Sequence[Sequence[int]], indices: list[int], pad_id: int, padding_side: str = "right") -> Batch:
    """Pad the sequences `indices` of `ids` into one batch on the CPU."""
    import torch

    width = max(len(ids[i]) for i in indices)
    input_ids = torch.full((len(indices), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(indices), width), dtype=torch.long)
    for row, i in enumerate(indices):
        seq = torch.as_tensor(ids[i], dtype=torch.long)
        span = slice(width - len(seq), width) if padding_side == "left" else slice(0, len(seq))
        input_ids[row, span] = seq
        mask[row, span] = 1
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
    return Batch(indices, input_ids, mask, position_ids)


def pool(hidden, mask, pooling: str):
    """(batch, seq, d) hidden states → (batch, d) features, reading only real tokens."""
    import torch

    if pooling == "last":
        positions = torch.arange(mask.shape[1], device=mask.device)
        last = (mask * positions).argmax(dim=1)  # last real token, whichever side the padding is on
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
    real = mask.bool().unsqueeze(-1)  # (batch, seq, 1)
    # where(), not a product: a padded position may hold NaN in some attention kernels.
    total = torch.where(real, hidden.float(), 0.0).sum(dim=1)
    return total / real.sum(dim=1).clamp(min=1)


def auto_token_budget(model, device, hidden_states: bool) -> int:
    """Tokens per batch that fit the device: what stays in the caches on a CPU, free memory on a GPU."""
    import torch

    config = model.config
    d = int(config.hidden_size)
    if device.type != "cuda":
        return max(1, CPU_BATCH_ELEMENTS // d)
    free, _ = torch.cuda.mem_get_info(device)
    element = next(model.parameters()).element_size()
    kept = int(config.num_hidden_layers) + 1 if hidden_states else 1
    # One layer's transient activations (qkv, attention output, MLP) plus kept hidden states,
    # with a safety factor of two; an out-of-memory still halves the budget and retries.
    per_token = element * d * (16 + kept) * 2
    return int(max(512, min(GPU_TOKEN_BUDGET, 0.6 * free / per_token)))


POSITION_TABLES = ("wpe", "embed_positions", "position_embeddings")
"""Names of a learned absolute position table (GPT-2, OPT, GPT-Neo, BERT-style models)."""


def learned_positions(model) -> int | None:
    """How many positions `model` has learned embeddings for; None for relative positions (RoPE, ALiBi).

    A longer sequence indexes past the table: an IndexError deep in torch on a CPU, a device-side
    assert on a GPU. Models with rotary positions have no table and are not limited here.
    """
    import torch

    for name, module in model.named_modules():
        if name.rsplit(".", 1)[-1] in POSITION_TABLES and isinstance(module, torch.nn.Embedding):
            return int(module.num_embeddings) - int(getattr(module, "offset", 0))  # OPT keeps 2 extra rows
    return None


def extract_features(
    model,
    ids: Sequence[Sequence[int]],
    *,
    pad_id: int,
    layers: Sequence[int],
    poolings: Sequence[str] = ("last",),
    device=None,
    batch_size: int | None = None,
    padding_side: str = "right",
    head=None,
    progress: Progress = silent,
) -> Iterator[Extracted]:
    """Yield an `Extracted` per batch: its indices and `{(layer, pooling): features}`, (batch, d) on `device`.

    `model` is a base model (hidden states out). Layer = hidden_states index (0 = embeddings,
    `num_hidden_layers` = the output after the final norm). With `head` (the LM head), the
    probe's next-token loss is summed too, from the same forward pass. Without `batch_size`,
    batches fill a token budget set from the device's memory, halved whenever a batch runs out
    of memory. `progress` hears a `bar` event of "tokens" per batch: real tokens done of the total.
    Raises CheckpointError when features are NaN/inf or memory runs out at batch 1.
    """
    import torch

    device = device or next(model.parameters()).device
    n_layers = int(model.config.num_hidden_layers)
    need_all = any(layer != n_layers for layer in layers)
    accepts_positions = "position_ids" in inspect.signature(model.forward).parameters
    lengths = [len(s) for s in ids]
    if not lengths or min(lengths) == 0:
        raise InputError("every probe sequence needs at least one token")
    if (positions := learned_positions(model)) is not None and max(lengths) > positions:
        raise InputError(
            f"probe sequences have up to {max(lengths)} tokens, but this model learned only {positions} positions "
            f"(a sequence longer than that has no position embedding): rerun with --max-len {positions}"
        )
    total = sum(lengths)
    budget = auto_token_budget(model, device, need_all)
    pending = plan_batches(lengths, batch_size=batch_size, token_budget=budget)
    done = 0
    with torch.inference_mode(), fp32_final_norm(model):
        while pending:
            indices = pending.pop(0)
            batch = collate(ids, indices, pad_id, padding_side)
            try:
                out = _forward(model, batch, device, layers, poolings, n_layers, need_all, accepts_positions, head,
                               causal_padding=padding_side == "right")
            except torch.cuda.OutOfMemoryError:
                if len(indices) == 1:
                    raise CheckpointError(
                        f"out of memory on {device} with a single sequence of {len(ids[indices[0]])} tokens: "
                        "lower --max-len, use --dtype bfloat16, or a larger device"
                    ) from None
                if device.type == "cuda":
                    torch.cuda.empty_cache()
                # Retry this batch in halves, and plan the rest with half the budget.
                budget = max(1, budget // 2)
                batch_size = max(1, batch_size // 2) if batch_size else None
                rest = [i for b in pending for i in b]
                half = len(indices) // 2
                pending = [indices[:half], indices[half:]] + [
                    [rest[j] for j in b]
                    for b in plan_batches([lengths[i] for i in rest], batch_size=batch_size, token_budget=budget)
                ]
                continue
            done += sum(lengths[i] for i in indices)
            progress(Event("bar", "tokens", done=done, total=total))
            yield out


@contextmanager
def fp32_final_norm(model) -> Iterator[None]:
    """While the block runs, a bf16/fp16 model's final norm computes in fp32 and returns fp32.

    The last hidden state is what geometry measures: rounded to bf16's 8-bit mantissa, every
    feature carries a relative error of ~0.4 %, a noise floor that reshapes the small
    eigenvalues of the spectrum's tail, where αReQ is fitted (on a trained d = 16 model, αReQ
    read 6.4 in fp32 and 33.5 in bf16 without this). A fp32 copy of the norm is applied to
    the fp32 upcast of its input; the bf16 body keeps its speed, and the norm costs O(d) per
    token. Models in fp32, or without a known final norm, are left as they are.
    """
    import copy

    import torch

    norm = next((getattr(model, name) for name in FINAL_NORMS if isinstance(getattr(model, name, None), torch.nn.Module)), None)
    parameter = next(model.parameters(), None)
    if norm is None or parameter is None or parameter.dtype == torch.float32:
        yield
        return
    norm32 = copy.deepcopy(norm).float()
    handle = norm.register_forward_hook(lambda module, args, output: norm32(args[0].float()))
    try:
        yield
    finally:
        handle.remove()


def _forward(model, batch: Batch, device, layers, poolings, n_layers, need_all, accepts_positions, head,
             causal_padding: bool = False) -> Extracted:
    import torch

    mask = batch.attention_mask.to(device, non_blocking=True)
    kwargs = {"input_ids": batch.input_ids.to(device, non_blocking=True), "use_cache": False}
    # A batch without padding needs no mask, and neither does one padded on the right: in a
    # causal model a real token attends only to the tokens before it, all real, and its
    # positions are 0, 1, … as unpadded. Without a mask attention takes its causal fast path
    # (SDPA's flash kernel); with one it materialises (batch, heads, seq, seq) scores, which on
    # the CPU made batches slower than one sequence at a time (bench/extract.py). Pooling and
    # the loss read real tokens only.
    if not causal_padding and not bool(batch.attention_mask.all()):
        kwargs["attention_mask"] = mask
        if accepts_positions:
            kwargs["position_ids"] = batch.position_ids.to(device, non_blocking=True)
    out = model(**kwargs, output_hidden_states=need_all)
    features = {}
    for layer in layers:
        # hidden_states[-1] is the final-norm output in HF models; last_hidden_state is that, always.
        hidden = out.last_hidden_state if layer == n_layers else out.hidden_states[layer]  # (batch, seq, d)
        for pooling in poolings:
            f = pool(hidden, mask, pooling)  # (batch, d)
            if not bool(torch.isfinite(f).all()):
                raise CheckpointError(
                    f"features at layer {layer} ({pooling} pooling) contain NaN or inf in "
                    f"{str(hidden.dtype).removeprefix('torch.')}: {_non_finite_cause(hidden.dtype)}"
                )
            features[(layer, pooling)] = f
    if head is None:
        return Extracted(batch.indices, features)
    nll, predicted = next_token_nll(head, out.last_hidden_state, kwargs["input_ids"], mask)
    return Extracted(batch.indices, features, nll, predicted)


LOSS_CHUNK = 4096  # positions per head call: bounds the (positions, vocab) logits in memory


def next_token_nll(head, hidden, input_ids, mask) -> tuple[float, int]:
    """Summed cross-entropy (nats) of each real token given the real tokens before it."""
    import torch

    pairs = (mask[:, :-1] * mask[:, 1:]).bool()  # position t predicts t+1, both real
    states = hidden[:, :-1][pairs]  # (k, d)
    targets = input_ids[:, 1:][pairs]  # (k,)
    total = torch.zeros((), dtype=torch.float64, device=hidden.device)
    weight = next(head.parameters(), None)
    if weight is not None:
        states = states.to(weight.dtype)  # the final norm's output may be fp32 (`fp32_final_norm`)
    for i in range(0, len(targets), LOSS_CHUNK):
        logits = head(states[i : i + LOSS_CHUNK]).float()  # (chunk, vocab)
        total += torch.nn.functional.cross_entropy(logits, targets[i : i + LOSS_CHUNK], reduction="sum")
    return float(total), int(len(targets))
