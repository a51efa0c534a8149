"""What a run is called and where it lands: run names, the names a user types into them (tag), and the
OmegaConf resolvers conf/ uses for them (${run_name:...}, ${sweep_group:}, ${resume_dir:...}, ${hydra_subdir:...},
${uid:})."""

from __future__ import annotations

import uuid
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import OmegaConf

from src.errors import ConfigError
from src.quant.weights import weight_token


def run_name(model: str, data: str, bits, ste: str, seed: int, tag=None, wquant="fp", wbits=None) -> str:
    """<model>-<data>-<ste>-<b>bit-s<seed>[-<tag>]; the activation part is ``fp`` for a float ReLU. Quantized
    weights name both widths instead of <b>bit: w2a2, w1a2 (binary), wta2 (ternary), w4afp (float activations)."""
    weights = weight_token(wquant, wbits)
    if weights is None:
        activation = "fp" if bits is None else f"{ste}-{bits}bit"
    else:
        activation = f"w{weights}afp" if bits is None else f"{ste}-w{weights}a{bits}"
    name = f"{model}-{data}-{activation}-s{seed}" + (f"-{tag}" if tag else "")
    check_name(name, "run_name")  # it becomes a directory: refused here, before Hydra makes it
    return name


# A name that becomes one path component (tag, run_name): printable, no separator, no "..", no leading "." or
# "-" (hidden files, options), at most NAME_MAX characters; what else a file system refuses is its own error.
NAME_MAX = 200


def check_name(value, key: str) -> None:
    """Raise a one-line ConfigError unless ``value`` is safe as a single path component."""
    text = str(value)
    bad = (
        not text
        or len(text) > NAME_MAX
        or not text.isprintable()
        or any(c.isspace() or c in '/\\:*?"<>|' for c in text)
        or ".." in text
        or text[0] in ".-"
    )
    if bad:
        raise ConfigError(
            f"{key} must be one plain name: none of / \\ : * ? \" < > |, '..', spaces or control characters, not "
            f"starting with . or -, at most {NAME_MAX} characters; got {value!r}"
        )


def sweep_group() -> str | None:
    """The W&B group of a multirun job: <parent>/<sweep dir>, e.g. mnist_paper/table1 for a pipeline stage
    (None for a single run)."""
    hydra = HydraConfig.get()
    sweep = Path(hydra.sweep.dir)
    return f"{sweep.parent.name}/{sweep.name}" if hydra.mode == RunMode.MULTIRUN else None


def resume_dir(resume, default: str) -> str:
    """hydra.run.dir: the run dir of ``resume`` (a run dir, or checkpoints/<file>.ckpt inside one), else default."""
    if not resume:
        return default
    path = Path(str(resume))
    return str(path.parent.parent if path.suffix == ".ckpt" and path.parent.name == "checkpoints" else path)


def hydra_subdir(resume) -> str | None:
    """hydra.output_subdir: .hydra/ for a new run; none for resume= (the run's .hydra/ stays its first start's,
    provenance.json lists every start's command), so that a resume, even one refused, never rewrites it."""
    return None if resume else ".hydra"


def register_resolvers() -> None:
    """Resolvers for conf/: ${run_name:...}, ${sweep_group:}, ${resume_dir:...}, ${hydra_subdir:...} and ${uid:}
    (6 hex chars, cached so that a run, and every job of a sweep, sees one value)."""
    if not OmegaConf.has_resolver("run_name"):
        OmegaConf.register_new_resolver("run_name", run_name)
        OmegaConf.register_new_resolver("sweep_group", sweep_group)
        OmegaConf.register_new_resolver("resume_dir", resume_dir)
        OmegaConf.register_new_resolver("hydra_subdir", hydra_subdir)
        OmegaConf.register_new_resolver("uid", lambda: uuid.uuid4().hex[:6], use_cache=True)


def check_tag(tag) -> None:
    """A tag (null, a string or a number) that can be part of a directory name."""
    if tag is not None:
        if not isinstance(tag, str | int) or isinstance(tag, bool):
            raise ConfigError(f"tag must be a name, got {tag!r}")
        check_name(tag, "tag")
