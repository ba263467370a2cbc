"""Checkpoint series: which checkpoints a model has, with step, tokens and stage.

A registry of model families (`FAMILIES`) turns the name a user types (`pythia-410m`,
`olmo-7b`, `tulu-3-8b`, `hf:org/name`, `./my-run`) into a `Series`: an ordered list of
`CheckpointRef`s. Nothing here downloads weights; only the hub's branch list is read (OLMo-2,
`hf:`), falling back to the refs of the local hub cache when offline.
"""

from __future__ import annotations

import fnmatch
import functools
import hashlib
import json
import math
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from geowh.errors import InputError
from geowh.warehouse.names import (
    PYTHIA_TOKENS_PER_STEP,
    STAGE_ORDER,
    canonical_model,
    local_stage,
    local_step,
    parse_step,
    parse_tokens,
)

_SAMPLE = 65536  # bytes of weights read from each end of a file for its fingerprint


@dataclass(frozen=True)
class CheckpointRef:
    """One checkpoint: where its weights are and where it sits in training."""

    model: str
    """Warehouse model name (pythia-410m, olmo-2-7b, my-run)."""
    label: str
    """Checkpoint label: hub revision (step1000) or folder name (checkpoint-1000)."""
    step: int | None = None
    tokens: float | None = None
    stage: str | None = "pretrain"
    repo: str | None = None
    """Hugging Face repo id; None for a local folder."""
    revision: str | None = None
    path: Path | None = None
    """Local checkpoint folder; None for a hub checkpoint."""

    @property
    def stage_order(self) -> int | None:
        return STAGE_ORDER.get(self.stage) if self.stage else None

    @property
    def source(self) -> str:
        if self.path is not None:
            return self.path.resolve().as_uri()
        if self.repo is None:  # measured in memory during training (geowh.integrations): no weights saved
            return "live"
        return f"hf://{self.repo}@{self.revision or 'main'}"

    def row(self) -> dict:
        """The `checkpoints` table row."""
        return {
            "model": self.model,
            "checkpoint": self.label,
            "step": self.step,
            "tokens": self.tokens,
            "stage": self.stage,
            "stage_order": self.stage_order,
            "source": self.source,
            "fingerprint": self.fingerprint(),
        }

    def fingerprint(self) -> str | None:
        """What the weights of a local checkpoint are (`checkpoints.fingerprint`): sha256 over each
        weight file's name, size, safetensors header and first and last 64 KiB of data. The header
        alone is the same for two runs of one architecture; the sampled bytes tell them apart, at
        the cost of two small reads per file. None for a hub checkpoint (its hub commit is
        recorded once loaded) and for a folder without weights or that cannot be read."""
        if self.path is None:
            return None
        digest, found = hashlib.sha256(), False
        try:
            for file in sorted(self.path.iterdir()):
                if file.suffix not in (".safetensors", ".bin", ".pt", ".pth"):
                    continue
                size = file.stat().st_size
                with file.open("rb") as f:
                    head = f.read(8)
                    if file.suffix == ".safetensors" and len(head) == 8:
                        head += f.read(min(int.from_bytes(head, "little"), 100_000_000))
                    head += f.read(_SAMPLE)
                    f.seek(max(size - _SAMPLE, 0))
                    tail = f.read(_SAMPLE)
                digest.update(b"\0".join([file.name.encode(), str(size).encode(), head, tail, b""]))
                found = True
        except OSError:  # unreadable: its load fails and says so
            return None
        return digest.hexdigest()[:16] if found else None

    def describe(self) -> dict:
        """What `geowh checkpoints` shows."""
        return {
            "checkpoint": self.label,
            "step": self.step,
            "tokens": self.tokens,
            "stage": self.stage,
            "revision": self.revision,
            "repo": self.repo,
            "path": str(self.path) if self.path else None,
        }


@dataclass(frozen=True)
class Series:
    """A model's checkpoints in training order."""

    model: str
    family: str
    checkpoints: tuple[CheckpointRef, ...]
    hub_repo: str | None = None
    tokenizer: str | None = None
    """Where the tokenizer comes from when checkpoints lack one (hub id or local path)."""
    skipped: tuple[str, ...] = ()
    """Revisions or folders seen but not understood as checkpoints (e.g. `main`)."""
    folder: Path | None = None
    """The run folder of a local series (resolved); None for a hub series."""

    @property
    def source(self) -> str | None:
        """Where the series comes from (`models.source`): file:///run/folder or hf://repo; another
        source is refused under the same model name."""
        if self.folder is not None:
            return self.folder.as_uri()
        return f"hf://{self.hub_repo}" if self.hub_repo else None

    def models_row(self) -> dict:
        return {"model": self.model, "family": self.family, "hub_repo": self.hub_repo, "tokenizer": self.tokenizer,
                "source": self.source}


@dataclass(frozen=True)
class Family:
    """A registry entry: how to list a family's checkpoints."""

    name: str
    description: str
    models: tuple[str, ...]
    """Model names of the family (empty for open-ended families: hf, local)."""
    resolve: Callable[..., Series] = field(repr=False)
    example: str = ""

    def describe(self) -> dict:
        return {"family": self.name, "description": self.description, "models": list(self.models), "example": self.example}


def check_source(series: Series, stored_source: str | None, stored: dict[str, tuple[str | None, str | None]],
                 force: bool = False) -> None:
    """Refuse to mistake `series` for another one stored under its model name.

    `stored_source` and `stored` ({checkpoint: (source, fingerprint)}) are what the warehouse
    holds of the name (`Warehouse.stored_series`). Another source (folder or hub repo) claiming
    the name is refused, `--force` or not; a local checkpoint whose weights changed since it was
    stored (a new run written into the same folder) is refused unless `force` (which measures it
    again). The same source resumes. Rows stored before sources were recorded name their
    checkpoints' sources, from which the series' is read.
    """
    current = series.source
    before = {stored_source} if stored_source else _series_sources(where for where, _ in stored.values())
    if current and before and current not in before:
        first = sorted(before)[0]
        raise InputError(
            f"the model name {series.model!r} already holds the series from {_shown(first)}, and "
            f"{_shown(current)} is another source: give this one its own name with --name NAME "
            f"(or ingest {_shown(first)} to resume the stored series)"
        )
    if force:
        return
    for ref in series.checkpoints:
        was = stored.get(ref.label, (None, None))[1]
        if ref.path is None or was is None:
            continue
        now = ref.fingerprint()
        if now is not None and now != was:
            raise InputError(
                f"{ref.path} has changed since it was stored as {series.model} {ref.label} (its weights' fingerprint "
                f"was {was}, is {now}): a new run in the same folder? give it its own name with --name NAME, "
                "or replace the stored rows with --force"
            )


def _series_sources(checkpoint_sources) -> set[str]:
    """The sources a series stored before sources were recorded may have come from, read from its
    checkpoints' (file:///run/step1 → file:///run, or the folder itself when it was ingested
    alone; hf://repo@rev → hf://repo). Empty when none says (live, imported)."""
    found = set()
    for where in checkpoint_sources:
        if where and where.startswith("file://"):
            found |= {where.rsplit("/", 1)[0], where}
        elif where and where.startswith("hf://"):
            found.add(where.split("@", 1)[0])
    return found


def _shown(source: str) -> str:
    return source.removeprefix("file://") if source.startswith("file://") else source


# -- Pythia ------------------------------------------------------------------------------------

PYTHIA_SIZES = ("14m", "31m", "70m", "160m", "410m", "1b", "1.4b", "2.8b", "6.9b", "12b")
PYTHIA_NO_DEDUPED = {"14m", "31m"}


def pythia_models() -> tuple[str, ...]:
    names = [f"pythia-{s}" for s in PYTHIA_SIZES]
    names += [f"pythia-{s}-deduped" for s in PYTHIA_SIZES if s not in PYTHIA_NO_DEDUPED]
    return tuple(names)


def pythia_steps() -> list[int]:
    """The 154 published steps: 0, 1, 2, 4 … 512, then 1,000 … 143,000 every 1,000."""
    return [0] + [2**i for i in range(10)] + list(range(1000, 143001, 1000))


def _pythia(model: str, **_) -> Series:
    refs = tuple(
        CheckpointRef(
            model=model,
            label=f"step{s}",
            step=s,
            tokens=float(s * PYTHIA_TOKENS_PER_STEP),
            repo=f"EleutherAI/{model}",
            revision=f"step{s}",
        )
        for s in pythia_steps()
    )
    return Series(model, "pythia", refs, hub_repo=f"EleutherAI/{model}", tokenizer=f"EleutherAI/{model}")


# -- OLMo-2 ------------------------------------------------------------------------------------

OLMO2_REPOS = {
    "olmo-2-1b": "allenai/OLMo-2-0425-1B",
    "olmo-2-7b": "allenai/OLMo-2-1124-7B",
    "olmo-2-13b": "allenai/OLMo-2-1124-13B",
}

# stage1-step1000-tokens5B, stage2-ingredient2-step1000-tokens5B, and the unprefixed
# step1000-tokens4B of some early branches. Token counts may carry decimals or a T suffix.
_OLMO_BRANCH = re.compile(
    r"^(?:stage(?P<stage>\d+)-)?(?:ingredient(?P<ingredient>\d+)-)?"
    r"step(?P<step>\d+)(?:-tokens(?P<tokens>\d+(?:\.\d+)?)(?P<unit>[BT]))?$",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class Branch:
    """A parsed OLMo-2-style branch name."""

    stage: str
    step: int
    tokens: float | None
    ingredient: int | None


def parse_olmo_branch(name: str) -> Branch | None:
    """Stage, step and tokens of an OLMo-2 branch name; None when the name is not a checkpoint."""
    m = _OLMO_BRANCH.match(name.strip())
    if not m:
        return None
    stage_number = int(m["stage"] or 1)
    stage = "pretrain" if stage_number == 1 else "mid"
    tokens = None
    if m["tokens"] is not None:
        tokens = float(m["tokens"]) * (1e12 if m["unit"].upper() == "T" else 1e9)
    ingredient = int(m["ingredient"]) if m["ingredient"] else None
    return Branch(stage, int(m["step"]), tokens, ingredient)


def _olmo2(model: str, revisions: Sequence[str] | None = None, **_) -> Series:
    repo = OLMO2_REPOS[model]
    names = list(revisions) if revisions else hub_branches(repo)
    refs, skipped = [], []
    for name in names:
        branch = parse_olmo_branch(name)
        if branch is None:
            skipped.append(name)
            continue
        refs.append(CheckpointRef(model, name, branch.step, branch.tokens, branch.stage, repo=repo, revision=name))
    # Stage 2 ingredients are parallel runs: each one is kept together, in step order.
    def ingredient(label: str) -> int:
        branch = parse_olmo_branch(label)
        assert branch is not None  # refs hold only the names that parsed
        return branch.ingredient or 0

    refs.sort(key=lambda r: (r.stage_order, ingredient(r.label), r.step))
    return Series(model, "olmo-2", tuple(refs), hub_repo=repo, tokenizer=repo, skipped=tuple(skipped))


# -- Tülu-3 ------------------------------------------------------------------------------------

TULU3_STAGES = {
    "tulu-3-8b": (
        ("base", "pretrain", "meta-llama/Llama-3.1-8B"),
        ("sft", "sft", "allenai/Llama-3.1-Tulu-3-8B-SFT"),
        ("dpo", "dpo", "allenai/Llama-3.1-Tulu-3-8B-DPO"),
        ("rlvr", "rlvr", "allenai/Llama-3.1-Tulu-3-8B"),
    ),
}


def _tulu3(model: str, **_) -> Series:
    refs = tuple(
        CheckpointRef(model, label, None, None, stage, repo=repo, revision="main")
        for label, stage, repo in TULU3_STAGES[model]
    )
    return Series(model, "tulu-3", refs, hub_repo=refs[-1].repo, tokenizer=refs[-1].repo)


# -- OLMo-2 instruct lineages -----------------------------------------------------------------

# The post-training repos of each OLMo-2 base, in stage order. Repo ids are AllenAI's naming as
# known when this was written (1B: the 0425 release; 7B and 13B: 1124), not checked against the
# hub from here: a wrong one fails its checkpoint's download, and the series says which repo.
OLMO2_LINEAGES = {
    "olmo-2-1b-instruct": "olmo-2-1b",
    "olmo-2-7b-instruct": "olmo-2-7b",
    "olmo-2-13b-instruct": "olmo-2-13b",
}
LINEAGE_STAGES = (("sft", "sft", "-SFT"), ("dpo", "dpo", "-DPO"), ("rlvr", "rlvr", "-Instruct"))
"""(label, stage, repo suffix) of each post-training stage: the SFT model, DPO on it, RLVR on that."""


def _olmo2_lineage(model: str, revisions: Sequence[str] | None = None, **_) -> Series:
    """Base → SFT → DPO → RLVR as one stage-ordered series.

    From the base repo: the last step of pretraining (stage 1), the last step of each mid-training
    ingredient (stage 2, where published) and `main` (the released base, mid-training merged),
    labelled `base`, which SFT starts from. Then `main` of each post-training repo, labelled by its
    stage, after any step branches that repo publishes (as `{stage}-{branch}`). The base repo's
    branches come from the hub or, offline, the local hub cache (`revisions` names them instead);
    a post-training repo whose branches cannot be listed contributes its `main`.
    """
    base_repo = OLMO2_REPOS[OLMO2_LINEAGES[model]]
    base = _olmo2(OLMO2_LINEAGES[model], revisions=revisions)
    last: dict[tuple[str, int | None], CheckpointRef] = {}  # (stage, ingredient) → its last step
    for ref in base.checkpoints:
        branch = parse_olmo_branch(ref.label)
        assert branch is not None  # _olmo2 keeps only branches that parse
        key = (branch.stage, branch.ingredient)
        if key not in last or (ref.step or 0) >= (last[key].step or 0):
            last[key] = ref
    kept = {r.label for r in last.values()}
    refs = [replace(r, model=model) for r in base.checkpoints if r.label in kept]  # _olmo2's stage order
    refs.append(CheckpointRef(model, "base", None, None, "mid", repo=base_repo, revision="main"))
    for label, stage, suffix in LINEAGE_STAGES:
        repo = base_repo + suffix
        steps = []
        for name in _branches_or_main(repo):
            step = parse_step(name)
            if name != "main" and step is not None:
                steps.append(CheckpointRef(model, f"{label}-{name}", step, parse_tokens(name), stage,
                                           repo=repo, revision=name))
        refs += sorted(steps, key=lambda r: (r.step or 0, r.label))
        refs.append(CheckpointRef(model, label, None, None, stage, repo=repo, revision="main"))
    top = refs[-1].repo
    skipped = tuple(name for name in base.skipped if name != "main")  # main is the `base` checkpoint
    return Series(model, "olmo-2-instruct", tuple(refs), hub_repo=top, tokenizer=top, skipped=skipped)


def _branches_or_main(repo: str) -> list[str]:
    """The branches of a post-training repo; `main` alone when they cannot be listed (offline, no cache)."""
    try:
        return hub_branches(repo)
    except InputError:
        return ["main"]


# -- any hub model -------------------------------------------------------------------------------



def _hub(model: str, revisions: Sequence[str] | None = None, name: str | None = None, **_) -> Series:
    repo = model.removeprefix("hf:")
    if repo.count("/") != 1:
        raise InputError(f"{model!r} is not a hub model: write hf:ORG/NAME, e.g. hf:EleutherAI/pythia-70m")
    names = list(revisions) if revisions else hub_branches(repo)
    series_name = name or repo
    refs = []
    for rev in names:
        olmo = parse_olmo_branch(rev)
        stage = olmo.stage if olmo else "pretrain"
        refs.append(CheckpointRef(series_name, rev, parse_step(rev), parse_tokens(rev), stage, repo=repo, revision=rev))
    if not revisions:  # a branch list comes unordered: order by stage then step
        refs.sort(key=lambda r: (r.stage_order, r.step is None, r.step or 0, r.label))
    return Series(series_name, "hf", tuple(refs), hub_repo=repo, tokenizer=repo)


HUB_TIMEOUT = 3.0
"""Seconds to wait for a TCP connection to the hub before calling it unreachable."""


def require_hub(what: str) -> None:
    """Raise at once, in one line, when the hub cannot be reached and HF_HUB_OFFLINE is not set.

    Without this check, huggingface_hub retries each file for half a minute or more and the
    error that finally surfaces blames whatever was loaded first (often the tokenizer).
    """
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return
    if (why := _hub_unreachable(constants.ENDPOINT)) is not None:
        raise InputError(
            f"cannot reach the Hugging Face hub at {constants.ENDPOINT} ({why}) to {what}: "
            "with the files already in the local hub cache, rerun with HF_HUB_OFFLINE=1; "
            "otherwise give a local checkpoint folder, or connect to the network"
        )


@functools.cache  # once per command
def _hub_unreachable(endpoint: str) -> str | None:
    import socket
    from urllib.parse import urlsplit

    url = urlsplit(endpoint)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname or "", port), timeout=HUB_TIMEOUT).close()
    except OSError as e:
        return f"{url.hostname}:{port}: {e.strerror or e or type(e).__name__}"
    return None


def hub_branches(repo: str) -> list[str]:
    """Branch names of a hub repo; offline (or when the hub cannot be reached), those in the cache."""
    from huggingface_hub import constants, list_repo_refs

    error: Exception | None = None
    if not constants.HF_HUB_OFFLINE:
        require_hub(f"list the branches of {repo}")
        try:
            return [b.name for b in list_repo_refs(repo).branches]
        except Exception as e:  # network, auth, missing repo: try the cache, then report this
            error = e
    cached = cached_revisions(repo)
    if cached:
        return cached
    why = f"the hub said: {error}" if error else "HF_HUB_OFFLINE is set"
    raise InputError(
        f"cannot list the branches of {repo} ({why}) and the local hub cache has none; "
        "go online once, or name them with --revisions a,b,c"
    )


def hub_cache_dir() -> Path:
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def repo_cache_dir(repo: str) -> Path:
    return hub_cache_dir() / ("models--" + repo.replace("/", "--"))


def cached_revisions(repo: str) -> list[str]:
    """Revisions of `repo` that the local hub cache has a ref for (refs/<revision> files)."""
    refs = repo_cache_dir(repo) / "refs"
    if not refs.is_dir():
        return []
    return sorted(str(p.relative_to(refs)) for p in refs.rglob("*") if p.is_file())


# -- local runs --------------------------------------------------------------------------------

def is_checkpoint_dir(path: Path) -> bool:
    return (path / "config.json").is_file()


def _local(model: str, name: str | None = None, **_) -> Series:
    root = Path(model).expanduser()
    if not root.is_dir():
        raise InputError(f"{model} is not a folder: give a run folder of HF checkpoints, or a registry model name")
    root = root.resolve()
    if is_checkpoint_dir(root):  # a single checkpoint folder
        step = local_step(root.name)
        series_name = name or (root.parent.name if step is not None else root.name)
        ref = CheckpointRef(series_name, root.name, step, parse_tokens(root.name), local_stage(root.name) or "pretrain",
                            path=root)
        return Series(series_name, "local", (ref,), tokenizer=None, folder=root.parent if step is not None else root)
    series_name = name or root.name
    per_step = _tokens_per_step(root)
    refs, skipped = [], []
    for child in sorted(p for p in root.iterdir() if p.is_dir()):
        step = local_step(child.name)
        if step is None and not is_checkpoint_dir(child):
            skipped.append(child.name)
            continue
        tokens = parse_tokens(child.name)
        if tokens is None and per_step and step is not None:
            tokens = float(step * per_step)
        # A folder named like a checkpoint but without weights is kept: it fails, visibly.
        refs.append(CheckpointRef(series_name, child.name, step, tokens, local_stage(child.name) or "pretrain",
                                  path=child))
    if not refs:
        raise InputError(
            f"{root} holds no checkpoint folders (named checkpoint-N, stepN, global_stepN, iter_N, … "
            "with a config.json inside): point at the run folder or at one checkpoint"
        )
    # Stage first: `geowh posttrain` restarts the step count in every stage (sft-step1 after pretrain-step600).
    refs.sort(key=lambda r: (r.stage_order or 0, r.step is None, r.step or 0, r.label))
    return Series(series_name, "local", tuple(refs), tokenizer=None, skipped=tuple(skipped), folder=root)


def _tokens_per_step(root: Path) -> int | None:
    """Tokens per optimizer step of a run `geowh train-mini` wrote (its train_config.json), else None."""
    try:
        plan = json.loads((root / "train_config.json").read_text())["plan"]
        return int(plan["tokens_per_step"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


# -- the registry --------------------------------------------------------------------------------

FAMILIES: dict[str, Family] = {
    "pythia": Family(
        "pythia",
        "EleutherAI Pythia suite: 154 revisions step0 … step143000, 2,097,152 tokens per step",
        pythia_models(),
        _pythia,
        "geowh ingest pythia-410m",
    ),
    "olmo-2": Family(
        "olmo-2",
        "AllenAI OLMo-2: hub branches stage1-…/stage2-ingredientK-… (aliases olmo-1b, olmo-7b, olmo-13b)",
        tuple(OLMO2_REPOS),
        _olmo2,
        "geowh ingest olmo-7b --checkpoints log:40",
    ),
    "tulu-3": Family(
        "tulu-3",
        "Llama-3.1-8B base → Tülu-3 SFT → DPO → RLVR, one stage-ordered series",
        tuple(TULU3_STAGES),
        _tulu3,
        "geowh ingest tulu-3-8b",
    ),
    "olmo-2-instruct": Family(
        "olmo-2-instruct",
        "OLMo-2 base (last pretraining and mid-training steps, main) → SFT → DPO → Instruct (RLVR), one "
        "stage-ordered series (aliases olmo-1b-instruct, olmo-7b-instruct, olmo-13b-instruct)",
        tuple(OLMO2_LINEAGES),
        _olmo2_lineage,
        "geowh ingest olmo-7b-instruct",
    ),
    "hf": Family(
        "hf",
        "any hub model: hf:ORG/NAME, revisions from --revisions or all branches",
        (),
        _hub,
        "geowh ingest hf:EleutherAI/pythia-70m --revisions step1000,step2000",
    ),
    "local": Family(
        "local",
        "a local run folder of HF checkpoints (checkpoint-N, stepN, global_stepN, iter_N, …) or one checkpoint",
        (),
        _local,
        "geowh ingest ./my-run --probe docs.txt",
    ),
}


def family_of(model: str) -> str:
    """The registry family that handles `model` (a name, hf:ORG/NAME, or a path)."""
    if model.startswith("hf:"):
        return "hf"
    name = canonical_model(model)
    for family in FAMILIES.values():
        if name in family.models:
            return family.name
    if os.sep in model or model.startswith(".") or model.startswith("~") or Path(model).is_dir():
        return "local"
    known = ", ".join(m for f in FAMILIES.values() for m in f.models[:3])
    raise InputError(
        f"unknown model {model!r}: use a registry name ({known}, … — see `geowh models`), "
        "hf:ORG/NAME for any hub model, or the path of a local run folder"
    )


def resolve_series(
    model: str,
    *,
    revisions: Sequence[str] | None = None,
    name: str | None = None,
    checkpoints: str = "all",
) -> Series:
    """The series a user means by `model`, restricted to the `checkpoints` selection."""
    model = str(model)
    family = family_of(model)
    key = model if family in ("hf", "local") else canonical_model(model)
    series = FAMILIES[family].resolve(key, revisions=revisions, name=name)
    if name and family not in ("hf", "local"):
        series = replace(
            series, model=name, checkpoints=tuple(replace(r, model=name) for r in series.checkpoints)
        )
    return replace(series, checkpoints=tuple(select_checkpoints(series.checkpoints, checkpoints)))


# -- --checkpoints selection -----------------------------------------------------------------------

_RANGE = re.compile(r"^(\d+)?(?::|\.\.)(\d+)?(?::(\d+))?$")


def select_checkpoints(refs: Sequence[CheckpointRef], spec: str | None) -> list[CheckpointRef]:
    """Pick checkpoints by `spec`, keeping training order.

    - `all` (or empty): every checkpoint;
    - a list `step1000,step2000`, `1000,2000` (steps) or glob patterns `stage1-*`;
    - a range of steps `START:END[:STRIDE]` (either end may be left out): from START to END,
      each pick at least STRIDE steps after the previous one (works on grids with gaps);
    - `log:N`: N checkpoints spaced evenly in log(step + 1), nearest existing ones.
    """
    spec = (spec or "all").strip()
    refs = list(refs)
    if spec == "all":
        return refs
    if spec.startswith("log:"):
        try:
            count = int(spec[4:])
        except ValueError:
            raise InputError(f"--checkpoints {spec}: write log:N with N a whole number, e.g. log:20") from None
        return _log_spaced(refs, count)
    if m := _RANGE.match(spec):
        start = int(m[1]) if m[1] else 0
        end = int(m[2]) if m[2] else math.inf
        stride = int(m[3]) if m[3] else 1
        if stride < 1:
            raise InputError(f"--checkpoints {spec}: the stride must be at least 1")
        picked, last = [], None
        for ref in refs:
            if ref.step is None or not start <= ref.step <= end:
                continue
            if last is None or ref.step >= last + stride:
                picked.append(ref)
                last = ref.step
        return _nonempty(picked, spec)
    items = [s.strip() for s in spec.split(",") if s.strip()]
    if not items:
        raise InputError(f"--checkpoints {spec!r} names no checkpoint: use all, step1000,step2000, START:END or log:N")
    picked = []
    for item in items:
        if any(c in item for c in "*?["):
            found = [r for r in refs if fnmatch.fnmatch(r.label, item)]
        elif item.isdigit():
            found = [r for r in refs if r.step == int(item) or r.label == item]
        else:
            found = [r for r in refs if r.label == item]
        if not found:
            sample = ", ".join(r.label for r in refs[:4])
            raise InputError(f"--checkpoints: no checkpoint {item!r} in this series (it has {sample}, …)")
        picked += [r for r in found if r not in picked]
    order = {r.label: i for i, r in enumerate(refs)}
    return sorted(picked, key=lambda r: order[r.label])


def _log_spaced(refs: list[CheckpointRef], count: int) -> list[CheckpointRef]:
    stepped = [r for r in refs if r.step is not None]
    if count < 1 or not stepped:
        return _nonempty([], f"log:{count}")
    if count >= len(stepped):
        return stepped
    logs = [math.log((r.step or 0) + 1) for r in stepped]  # every r.step is set: `stepped` filtered them
    lo, hi = min(logs), max(logs)
    chosen: list[int] = []
    for i in range(count):
        target = lo + (hi - lo) * i / (count - 1) if count > 1 else hi
        free = [j for j in range(len(stepped)) if j not in chosen]
        chosen.append(min(free, key=lambda j: (abs(logs[j] - target), j)))
    return [stepped[j] for j in sorted(chosen)]


def _nonempty(picked: list[CheckpointRef], spec: str) -> list[CheckpointRef]:
    if not picked:
        raise InputError(f"--checkpoints {spec} selects no checkpoint of this series: see `geowh checkpoints MODEL`")
    return picked


def list_models() -> list[dict]:
    """The registry, for `geowh models`."""
    return [f.describe() for f in FAMILIES.values()]
