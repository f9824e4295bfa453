"""A typed view of one dataset block of ``config.yaml`` (validation itself is the JSON schema's job)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class InputFile:
    path: Path
    split: str | None = None  # 'train' / 'test' when the split is by file (cross-study)


@dataclass(frozen=True)
class QCParams:
    min_genes: int = 0
    min_counts: float = 0
    max_pct_mito: float = 100.0
    min_cells: int = 0


@dataclass(frozen=True)
class DatasetSpec:
    """Everything the data stages need to know about one dataset (a labelled tissue or a corpus)."""

    name: str
    inputs: tuple[InputFile, ...]
    matrix: str = "X"
    label: str | None = None
    parent_label: str | None = None
    batch: str | None = None
    split: dict[str, Any] = field(default_factory=lambda: {"by": "none"})
    drop_labels: tuple[str, ...] = ()
    genes: str = "intersect"
    gene_symbols: str | None = None
    vocab_mode: str = "match"
    min_overlap: float = 0.3
    qc: QCParams = QCParams()

    @property
    def labelled(self) -> bool:
        return self.label is not None

    @property
    def files(self) -> str:
        """The input files, for messages: a user knows the files, not the dataset's name."""
        return " + ".join(str(i.path) for i in self.inputs)


def dataset_spec(name: str, block: dict[str, Any], defaults: dict[str, Any] | None = None) -> DatasetSpec:
    """Build a :class:`DatasetSpec` from a config block, filling unset keys from ``defaults``."""
    d = {**(defaults or {}), **block}
    qc = QCParams(**{**(defaults or {}).get("qc", {}), **block.get("qc", {})})
    inputs = tuple(
        InputFile(Path(i["path"]), i.get("split")) if isinstance(i, dict) else InputFile(Path(i))
        for i in d["inputs"]
    )
    return DatasetSpec(
        name=name,
        inputs=inputs,
        matrix=d.get("matrix", "X"),
        label=d.get("label"),
        parent_label=d.get("parent_label"),
        batch=d.get("batch"),
        split=d.get("split", {"by": "none"}),
        drop_labels=tuple(d.get("drop_labels", ())),
        genes=d.get("genes", "intersect"),
        gene_symbols=d.get("gene_symbols"),
        vocab_mode=d.get("vocab_mode", "match"),
        min_overlap=float(d.get("min_overlap", 0.3)),
        qc=qc,
    )


def all_datasets(config: dict[str, Any]) -> dict[str, DatasetSpec]:
    """Every dataset of the config: labelled tissues and unlabelled pretraining corpora, by name."""
    defaults = config.get("defaults", {})
    out = {name: dataset_spec(name, b, defaults) for name, b in config.get("tissues", {}).items()}
    for name, b in config.get("corpus", {}).items():
        out[name] = dataset_spec(name, {**b, "label": None, "parent_label": None}, defaults)
    return out


def read_config_file(path: str | Path) -> dict[str, Any]:
    """A YAML config file as a mapping; one-line errors naming the file (and the line of a syntax error)."""
    import yaml

    from celler.errors import CellerError

    path = Path(path)
    if not path.is_file():
        what = "is a folder" if path.is_dir() else "not found"
        msg = f"{path}: config file {what}; pass an existing YAML file (e.g. --configfile .test/config.yaml)"
        raise CellerError(msg)
    try:
        config = yaml.safe_load(path.read_text())
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "somewhere"
        msg = f"{path}: YAML syntax error at {where}: {e.problem}; fix that line"
        raise CellerError(msg) from e
    except (OSError, ValueError, yaml.YAMLError) as e:
        msg = f"{path}: cannot be read as YAML ({type(e).__name__}); is it the config file?"
        raise CellerError(msg) from e
    if not isinstance(config, dict) or not config:
        found = "nothing" if not config else f"a {type(config).__name__}"
        msg = (f"{path}: the config file holds {found}, not keys such as 'tissues:'; start from the "
               "repository's config.yaml")
        raise CellerError(msg)
    return config


def check_config(config: dict[str, Any], schema_path: str | Path, source: str = "config") -> None:
    """Validate ``config`` against the JSON schema; the error is one line naming ``source`` (the config
    file) and the key path."""
    import jsonschema
    import yaml

    from celler.errors import CellerError

    schema = yaml.safe_load(Path(schema_path).read_text())
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(config), key=lambda e: len(e.absolute_path))
    if errors:
        err = max(errors[:1] + [e for e in errors if e.context], key=lambda e: len(e.absolute_path))
        where = ".".join(str(p) for p in err.absolute_path) or "(top level)"
        msg = f"{source}: {where}: {err.message}"
        raise CellerError(msg)


def config_source(files, *, overrides: bool = False) -> str:
    """How messages name the config: its files (relative to the working directory when inside it), plus
    ``--config`` when keys were overridden on the command line; ``config.yaml`` when no file was given."""
    cwd = Path.cwd()
    names = [str(Path(f).relative_to(cwd)) if Path(f).is_relative_to(cwd) else str(f) for f in files]
    return " + ".join(names or ["config.yaml"]) + (" + --config" if overrides else "")


def check_input_files(config: dict[str, Any], source: str = "config") -> None:
    """Every input and query file the config names exists and is a file: one line naming the key if not."""
    from celler.errors import CellerError

    for section in ("tissues", "corpus"):
        for name, block in (config.get(section) or {}).items():
            files = [("inputs", i["path"] if isinstance(i, dict) else i) for i in block.get("inputs", [])]
            files += [("queries", q) for q in block.get("queries", [])]
            for key, f in files:
                if not Path(f).is_file():
                    what = "is a folder" if Path(f).is_dir() else "not found"
                    msg = (f"{source}: {section}.{name}.{key}: {f}: {what}; fix the path (relative to "
                           f"{Path.cwd()})")
                    raise CellerError(msg)
