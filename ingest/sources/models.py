"""Loading one checkpoint: weights, tokenizer, device and dtype.

`load_checkpoint(ref)` is the one loader every per-checkpoint measurement uses (geometry here,
memorization scoring later): it returns a `Loaded` holding the model (the base model without
its LM head unless `with_head=True`), the tokenizer with a pad token, and where it runs.
Failures to get or read weights become `CheckpointError`s that say which checkpoint and why.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from geowh.errors import CheckpointError, InputError
from geowh.ingest.sources.series import CheckpointRef, repo_cache_dir

DTYPES = ("auto", "float32", "bfloat16", "float16")


@dataclass
class Loaded:
    """A checkpoint ready to run."""

    model: Any
    """The base model (hidden states out), or the causal LM when loaded `with_head`."""
    tokenizer: Any
    """Its tokenizer; `pad_token_id` is always set (EOS when the tokenizer has no pad)."""
    device: Any
    dtype: Any
    ref: CheckpointRef

    @property
    def base(self) -> Any:
        """The model without its LM head: what geometry reads hidden states from."""
        return getattr(self.model, "base_model", self.model)

    @property
    def config(self) -> Any:
        return self.model.config

    @property
    def n_layers(self) -> int:
        return int(self.config.num_hidden_layers)

    @property
    def d_model(self) -> int:
        return int(self.config.hidden_size)

    @property
    def hub_commit(self) -> str | None:
        """The commit the hub resolved the revision to: the snapshot the weights were read from.
        None for a local folder or a model given in memory."""
        if self.ref.repo is None:
            return None
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(self.ref.repo, "config.json", revision=self.ref.revision or "main")
        return Path(cached).parent.name if isinstance(cached, str) else None

    def parameters(self) -> int:
        return sum(p.numel() for p in self.base.parameters())

    def models_row(self) -> dict:
        """What a loaded checkpoint tells the `models` table."""
        return {
            "model": self.ref.model,
            "parameters": self.parameters(),
            "layers": self.n_layers,
            "d_model": self.d_model,
            "vocab_size": int(self.config.vocab_size),
        }

    def release(self) -> None:
        """Free the weights (and the GPU memory they held)."""
        import gc

        import torch

        self.model = None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def resolve_device(device: str = "auto"):
    """`auto` → the first CUDA device when there is one, else the CPU."""
    import torch

    if device == "auto":
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError:
        raise InputError(f"--device {device}: use auto, cpu, cuda or cuda:N") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"--device {device}: this torch sees no CUDA device; use --device cpu")
    return resolved


def resolve_dtype(dtype: str, device) -> Any:
    """`auto` → bfloat16 on a GPU that supports it or a CPU with native bf16 matrix units, else float32."""
    import torch

    if dtype not in DTYPES:
        raise InputError(f"--dtype {dtype}: use one of {', '.join(DTYPES)}")
    if dtype == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        if device.type == "cpu" and cpu_native_bf16():
            return torch.bfloat16
        return torch.float32
    return getattr(torch, dtype)


def dtype_name(dtype) -> str:
    """`float32` for torch.float32 (or the name itself): how runs and configs name a dtype."""
    return str(dtype).removeprefix("torch.")


# CPU flags of native bf16 matrix arithmetic: AVX512-BF16 dot products, AMX tiles. Without
# them bf16 is emulated through fp32 and runs slower than fp32 itself.
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_native_bf16() -> bool:
    """Whether this CPU multiplies bf16 matrices natively (so `auto` picks bf16 on it).

    Asked of the hardware, not the CPU's name: torch's own capability query where it has one,
    else the flags of /proc/cpuinfo. `GEOWH_CPU_BF16=0` (or `1`) overrides the answer: the
    tests pin it to 0 so that their reference numbers stay fp32 on any machine.
    """
    import os

    override = os.environ.get("GEOWH_CPU_BF16", "").strip()
    if override in ("0", "1"):
        return override == "1"
    import torch

    found = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    queries = [q for q in found if q is not None]
    if queries:
        return any(bool(q()) for q in queries)
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False
    return any(flag in flags for flag in BF16_CPU_FLAGS)


def device_name(device) -> str:
    """`cuda:0 (NVIDIA H100 80GB HBM3)` or `cpu`, for the runs table."""
    import torch

    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return f"cuda:{index} ({torch.cuda.get_device_name(index)})"
    return str(device)


def _where(ref: CheckpointRef) -> tuple[str, dict]:
    """from_pretrained's first argument and keyword arguments for `ref`."""
    if ref.path is not None:
        return str(ref.path), {}
    assert ref.repo is not None, f"{ref.label} has no weights to load (a live checkpoint)"
    return ref.repo, {"revision": ref.revision or "main"}


def load_tokenizer(ref: CheckpointRef, fallback: str | Path | None = None):
    """The checkpoint's tokenizer (or `fallback`'s: a run folder or hub id), with a pad token."""
    from geowh.index.build import load_tokenizer as by_name

    candidates = [_where(ref)]
    if ref.path is not None:
        candidates.append((str(ref.path.parent), {}))  # a run keeps one tokenizer at its root
    if fallback is not None:
        candidates.append((str(fallback), {}))
    errors = []
    for where, kwargs in candidates:
        if ref.path is not None and Path(where).is_dir() and not _has_tokenizer(Path(where)):
            errors.append(f"{where}: no tokenizer files")
            continue
        if not kwargs and not Path(where).expanduser().exists():  # a hub id given as --tokenizer
            from geowh.ingest.sources.series import require_hub

            require_hub(f"load the tokenizer {where}")
        try:
            tokenizer = by_name(where, **kwargs)
            break
        except InputError as e:
            errors.append(f"{where}: {_short(e.__cause__ or e)}")
    else:
        raise CheckpointError(
            f"no tokenizer for {ref.model} {ref.label} ({'; '.join(errors)}): "
            "save one with the checkpoint or pass --tokenizer NAME_OR_PATH"
        )
    if tokenizer.pad_token_id is None:
        if tokenizer.eos_token_id is None:
            raise CheckpointError(f"the tokenizer of {ref.label} has neither a pad nor an EOS token to pad with")
        tokenizer.pad_token = tokenizer.eos_token  # Pythia: <|endoftext|>, masked anyway
    return tokenizer


def _has_tokenizer(folder: Path) -> bool:
    return any((folder / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model"))


def load_checkpoint(
    ref: CheckpointRef,
    *,
    device: str = "auto",
    dtype: str = "auto",
    with_head: bool = False,
    tokenizer: str | Path | None = None,
) -> Loaded:
    """Load one checkpoint for inference (eval mode, no gradients needed).

    Without `with_head` only the base model is built (`AutoModel`: the LM head's weights are
    not even materialised); with it, the causal LM (`AutoModelForCausalLM`) for log-likelihoods.
    `tokenizer` is used when the checkpoint has none. Raises CheckpointError when the weights
    cannot be downloaded or read.

    Example:
        loaded = load_checkpoint(series.checkpoints[0], device="cuda", dtype="bfloat16")
        hidden = loaded.base(**batch).last_hidden_state   # (batch, seq, d)
    """
    from transformers import AutoModel, AutoModelForCausalLM

    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, torch_device)
    stamps = {}
    if ref.path is not None:
        try:
            _check_folder(ref)
            stamps = _stamps(ref.path)
        except OSError as e:  # an unreadable folder fails this checkpoint, not the whole ingest
            raise CheckpointError(f"cannot read the checkpoint folder {ref.path} ({e.strerror or e}): "
                                  "fix its permissions, or leave it out with --checkpoints") from None
    else:
        _check_cached(ref)
    where, kwargs = _where(ref)
    cls = AutoModelForCausalLM if with_head else AutoModel
    if stamps and _can_read_whole():
        # Read the weights, do not map them: a mapped file cut short by a writer (a training saving
        # over it) kills the process with SIGBUS; a read one gives an error that names it.
        kwargs["disable_mmap"] = True
    with quiet_transformers():
        tok = load_tokenizer(ref, tokenizer)
        try:
            try:
                # PyTorch's fused attention (flash or memory-efficient kernels on a GPU); said
                # explicitly so that a model silently on the slow eager path cannot happen.
                model, info = cls.from_pretrained(  # type: ignore[misc]  # a tuple with output_loading_info=True
                    where, dtype=torch_dtype, output_loading_info=True, attn_implementation="sdpa", **kwargs
                )
            except ValueError as e:
                if "sdpa" not in str(e).lower():
                    raise
                # An architecture without SDPA support runs its own attention.
                model, info = cls.from_pretrained(where, dtype=torch_dtype, output_loading_info=True, **kwargs)  # type: ignore[misc]  # a tuple with output_loading_info=True
        except Exception as e:  # missing files, corrupt safetensors, hub errors, unknown architectures
            raise CheckpointError(f"cannot load {ref.model} {ref.label} from {ref.source}: {_short(e)}") from e
    if stamps and ref.path is not None and (changed := [p for p, stamp in _stamps(ref.path).items() if stamps.get(p) != stamp]):
        raise CheckpointError(
            f"{changed[0]} changed while it was being read (a training or a copy writing it?): "
            "ingest this checkpoint again once it is complete"
        )
    # transformers fills tensors absent from the files with random values: that is a broken checkpoint.
    if missing := info.get("missing_keys"):
        names = sorted(missing)
        raise CheckpointError(
            f"{ref.source} is missing {len(names)} weight tensor(s) ({', '.join(names[:3])}, …): "
            "the checkpoint is incomplete; download or save it again"
        )
    model.eval()
    model.requires_grad_(False)
    return to_device(Loaded(model, tok, model.device, torch_dtype, ref), torch_device)


def to_device(loaded: Loaded, device) -> Loaded:
    """Move `loaded` (read into host memory) to `device`, in place: the last step of
    `load_checkpoint`, apart so that a checkpoint read ahead of its turn (`ingest.engine.executors.Serial`)
    has only this left."""
    torch_device = resolve_device(device) if isinstance(device, str) else device
    try:
        loaded.model.to(torch_device)
    except Exception as e:  # out of memory, most often
        raise CheckpointError(f"cannot move {loaded.ref.label} to {torch_device}: {_short(e)}") from e
    loaded.device = torch_device
    return loaded


WEIGHT_FILES = ("*.safetensors", "*.bin", "*.pt", "*.pth", "*.ckpt")


def _can_read_whole() -> bool:
    """Whether this transformers can read weights instead of mapping them (`disable_mmap`, 5.x)."""
    from transformers import PreTrainedModel

    return "disable_mmap" in inspect.signature(PreTrainedModel.from_pretrained).parameters


def _stamps(folder: Path) -> dict[Path, tuple[int, int, int]]:
    """(inode, size, mtime) of each weight file: whether one changed while it was read."""
    found = {}
    for pattern in WEIGHT_FILES:
        for path in folder.glob(pattern):
            st = path.stat()
            found[path] = (st.st_ino, st.st_size, st.st_mtime_ns)
    return found


def _check_cached(ref: CheckpointRef) -> None:
    """Offline, a hub checkpoint must be in the local cache; say that, not "no tokenizer"."""
    from huggingface_hub import constants, try_to_load_from_cache

    if ref.repo is None or not constants.HF_HUB_OFFLINE:
        return
    if not isinstance(try_to_load_from_cache(ref.repo, "config.json", revision=ref.revision or "main"), str):
        raise CheckpointError(
            f"{ref.repo} at {ref.revision or 'main'} is not in the local hub cache and HF_HUB_OFFLINE is set: "
            "download it once online (or unset HF_HUB_OFFLINE), or leave it out with --checkpoints"
        )


def _check_folder(ref: CheckpointRef) -> None:
    """A local checkpoint folder must hold a config and weights; say so before blaming the tokenizer."""
    assert ref.path is not None, "only a local checkpoint has a folder to check"
    if not ref.path.is_dir():
        raise CheckpointError(f"checkpoint folder {ref.path} is gone")
    lacks = [what for what, found in (
        ("config.json", (ref.path / "config.json").is_file()),
        ("weights (*.safetensors, *.bin)", any(any(ref.path.glob(p)) for p in WEIGHT_FILES)),
    ) if not found]
    if lacks:
        empty = "is empty" if not any(ref.path.iterdir()) else f"has no {' and no '.join(lacks)}"
        raise CheckpointError(
            f"checkpoint folder {ref.path} {empty}: it holds no model files; "
            "save or copy the checkpoint again, or leave it out with --checkpoints"
        )
    try:
        config = json.loads((ref.path / "config.json").read_bytes())
    except ValueError as e:
        config = e
    if not isinstance(config, dict):  # else the tokenizer, which reads it first, is blamed
        raise CheckpointError(
            f"{ref.path / 'config.json'} is not a JSON object ({_short(config) if isinstance(config, Exception) else type(config).__name__}): "
            "the checkpoint is damaged; save or copy it again, or leave it out with --checkpoints"
        )


@contextmanager
def quiet_transformers() -> Iterator[None]:
    """transformers' load reports ("UNEXPECTED … can be ignored", progress bars) are not for geowh's users."""
    from transformers.utils import logging as transformers_logging

    level = transformers_logging.get_verbosity()
    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()  # one bar per weight file would drown geowh's own
    try:
        yield
    finally:
        transformers_logging.set_verbosity(level)


def _short(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    first = text[0] if text else ""
    return f"{type(error).__name__}: {first}"[:500]


def evict(ref: CheckpointRef) -> int:
    """Delete a hub checkpoint's files from the local hub cache; bytes freed (0 for local runs).

    Blobs another cached revision still uses are kept (the hub's own delete strategy).
    """
    if ref.path is not None or ref.repo is None:
        return 0
    from huggingface_hub import scan_cache_dir

    repo_dir = repo_cache_dir(ref.repo)
    ref_file = repo_dir / "refs" / (ref.revision or "main")
    commit = ref_file.read_text().strip() if ref_file.is_file() else (ref.revision or "")
    if not repo_dir.is_dir():
        return 0
    cache = scan_cache_dir(repo_dir.parent)
    known = {rev.commit_hash for repo in cache.repos if repo.repo_path == repo_dir for rev in repo.revisions}
    if commit not in known:
        return 0
    strategy = cache.delete_revisions(commit)  # also removes the refs that name it
    strategy.execute()
    return int(strategy.expected_freed_size)
