"""Names and constants that ingest, queries and repro share: model aliases, training stages,
Pythia's tokens per step, and how a checkpoint label names its step and tokens.

Lives in warehouse/ because ingest and queries both need them, and queries must not import
the ingest registries (they pull in the hub client).
"""

import re

# Stage names and their order in a series (the `checkpoints.stage_order` column).
STAGE_ORDER = {"pretrain": 0, "mid": 1, "sft": 2, "dpo": 3, "rlvr": 4}

PYTHIA_TOKENS_PER_STEP = 1024 * 2048  # batch × context = 2,097,152

_STEP = re.compile(r"(?:^|[^a-z])(?:global_step|step|iter|checkpoint|ckpt)[-_]?(\d+)", re.IGNORECASE)
_TOKENS = re.compile(r"tokens(\d+(?:\.\d+)?)([KMBT])", re.IGNORECASE)
_TOKEN_UNITS = {"K": 1e3, "M": 1e6, "B": 1e9, "T": 1e12}


def parse_step(label: str) -> int | None:
    """The step in a revision or folder name: step1000, checkpoint-1000, global_step1000, iter_0001000."""
    m = _STEP.search(label)
    return int(m.group(1)) if m else None


# Folder names training frameworks give checkpoints (HF Trainer, Pythia/NeoX, DeepSpeed,
# Megatron, Lightning, OLMo): the step is the number in the name.
LOCAL_PATTERNS = (
    re.compile(r"^checkpoint[-_](\d+)$"),
    re.compile(r"^step[-_]?(\d+)(?:-tokens\d+(?:\.\d+)?[BMT])?(?:-unsharded|-hf)?$", re.IGNORECASE),
    re.compile(r"^global_step[-_]?(\d+)$"),
    re.compile(r"^iter[-_]?(\d+)$"),
    re.compile(r"^ckpt[-_]?(\d+)$"),
    re.compile(r"^(?:epoch=\d+-)?step=(\d+)(?:\.ckpt)?$"),
    re.compile(r"^stage\d+-(?:ingredient\d+-)?step(\d+)(?:-tokens\d+(?:\.\d+)?[BT])?$", re.IGNORECASE),
    # `geowh posttrain`: the stage before the step (sft-step40), so one folder holds a stage-ordered series.
    re.compile(r"^(?:pretrain|mid|sft|dpo|rlvr)-step(\d+)$"),
)
_STAGED = re.compile(r"^(pretrain|mid|sft|dpo|rlvr)-step\d+$")


def local_step(folder_name: str) -> int | None:
    """The step a checkpoint folder's whole name gives (`checkpoint-1000`, `step1000-tokens4B`), else None."""
    for pattern in LOCAL_PATTERNS:
        if m := pattern.match(folder_name):
            return int(m.group(1))
    return None


def local_stage(folder_name: str) -> str | None:
    """The training stage a checkpoint folder's name gives (`dpo-step40` → dpo), else None (pretraining)."""
    m = _STAGED.match(folder_name)
    return m.group(1) if m else None


def parse_tokens(label: str) -> float | None:
    """The tokens a label states: `step1000-tokens4B` → 4e9."""
    m = _TOKENS.search(label)
    return float(m.group(1)) * _TOKEN_UNITS[m.group(2).upper()] if m else None


# The product card says `geowh phases --model olmo-7b`; the series are OLMo-2's.
MODEL_ALIASES = {
    "olmo-1b": "olmo-2-1b",
    "olmo-7b": "olmo-2-7b",
    "olmo-13b": "olmo-2-13b",
    "olmo-1b-instruct": "olmo-2-1b-instruct",
    "olmo-7b-instruct": "olmo-2-7b-instruct",
    "olmo-13b-instruct": "olmo-2-13b-instruct",
}


def canonical_model(name: str) -> str:
    """The warehouse's name for a model the user typed (`olmo-7b` → `olmo-2-7b`)."""
    return MODEL_ALIASES.get(name.strip().lower(), name.strip())
