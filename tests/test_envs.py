"""Per-rule conda environments (envs/*.yaml): they parse, every rule names one, each provides what it imports.

Static checks, no conda needed (~1 s): rule files are read as text, scripts and the celler modules they use
with ``ast``. A rule's imports are its script's own imports (a shell rule: the ``scripts/*.py`` or
``python -m celler.X`` it runs), followed into ``celler``: a module's import-time imports, transitively, plus
the imports inside the functions a script takes from it (the lazy imports of what it calls), and all lazy
imports of the modules those load; so a data rule is not charged with torch because some unrelated function
of a module it uses imports torch lazily.
"""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src"
RULE_FILES = sorted((REPO / "workflow/rules").glob("*.smk"))
ENV_FILES = sorted((REPO / "envs").glob("*.yaml"))

# import name -> conda package names that provide it (only where they differ or several are fine)
CONDA_NAMES = {
    "sklearn": {"scikit-learn"},
    "yaml": {"pyyaml"},
    "torch": {"pytorch", "pytorch-gpu", "pytorch-cpu"},
    "matplotlib": {"matplotlib", "matplotlib-base"},
    "mpl_toolkits": {"matplotlib", "matplotlib-base"},
    "igraph": {"python-igraph"},
    "leidenalg": {"leidenalg"},
    "PIL": {"pillow"},
    "tables": {"pytables"},
    "snakemake": {"snakemake", "snakemake-minimal"},
    "scvi": {"scvi-tools"},
}
# PyPI project name (pyproject.toml) -> conda package name
PIP_TO_CONDA = {"torch": "pytorch", "matplotlib": "matplotlib-base"}
FIRST_PARTY = {"celler"}
ACTIONS = ("shell", "script", "notebook", "wrapper", "cwl", "run")


# --- environment files --------------------------------------------------------------------------------------


def conda_spec(entry: str) -> tuple[str, SpecifierSet]:
    """('name', versions) of a conda dependency: 'numpy>=1.26,<3', 'python 3.11.*', 'pip', 'pytorch=2.5',
    "pytorch[version='>=2.2,<3', build='cpu*']" (build strings are ignored)."""
    entry = entry.strip()
    m = re.fullmatch(r"([A-Za-z0-9_.\-]+)\s*\[(.*)\]", entry)
    if m:
        fields = {
            k: next(v for v in vals if v)
            for k, *vals in re.findall(r"(\w+)\s*=\s*(?:'([^']*)'|\"([^\"]*)\"|([^,\s]+))", m.group(2))
        }
        name, version = m.group(1), fields.get("version", "")
    else:
        name, version = re.fullmatch(r"([A-Za-z0-9_.\-]+)\s*(.*)", entry).groups()
        version = version.split()[0] if version else ""
        if re.fullmatch(r"=[^=].*", version):  # conda's 'name=1.2[=build]' means 1.2.*
            version = version[1:].split("=")[0]
            version = f"=={version}" + ("" if version.endswith("*") else ".*")
        elif version[:1].isdigit():  # 'name 1.2.*'
            version = f"=={version}"
    return name.lower(), SpecifierSet(version)


def load_env(path: Path) -> dict:
    env = yaml.safe_load(path.read_text())
    conda, pip = {}, []
    for dep in env.get("dependencies") or []:
        if isinstance(dep, dict):
            pip += dep.get("pip", [])
        else:
            name, spec = conda_spec(str(dep))
            conda[name] = spec
    return {"raw": env, "conda": conda, "pip": pip}


ENVS = {p.name: load_env(p) for p in ENV_FILES}


def pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def pyproject_requirements() -> dict[str, Requirement]:
    """Conda name -> requirement, core dependencies and every extra."""
    p = pyproject()
    reqs = [*p["dependencies"], *(r for extra in p.get("optional-dependencies", {}).values() for r in extra)]
    out = {}
    for r in map(Requirement, reqs):
        out[PIP_TO_CONDA.get(r.name.lower(), r.name.lower())] = r
    return out


def _probes(*specs: SpecifierSet) -> list[Version]:
    """Versions at, just above and just below every bound of ``specs``: enough to compare two ranges."""
    out = set()
    for spec in specs:
        for s in spec:
            a, b, c = (list(Version(s.version.replace(".*", "")).release) + [0, 0])[:3]
            below = (a, b, c - 1) if c else (a, b - 1, 999) if b else (a - 1, 999, 999) if a else None
            for v in ((a, b, c), (a, b, c + 1), (a, b + 1, 0), (a + 1, 0, 0), below):
                if v is not None:
                    out.add(Version(".".join(map(str, v))))
    return sorted(out)


def within(inner: SpecifierSet, outer: SpecifierSet) -> bool:
    """Whether every version ``inner`` allows is one ``outer`` allows (checked at the bounds of both)."""
    probes = _probes(inner, outer)
    return all(outer.contains(v) for v in probes if inner.contains(v))


@pytest.mark.parametrize("path", ENV_FILES, ids=lambda p: p.name)
def test_env_file_parses(path):
    env = ENVS[path.name]["raw"]
    assert isinstance(env, dict), f"{path.name}: not a mapping"
    assert env.get("dependencies"), f"{path.name}: no dependencies"
    assert "conda-forge" in env.get("channels", []), f"{path.name}: conda-forge channel missing"
    assert "python" in ENVS[path.name]["conda"], f"{path.name}: no python pin"


@pytest.mark.parametrize("path", ENV_FILES, ids=lambda p: p.name)
def test_env_versions_follow_pyproject(path):
    env = ENVS[path.name]
    reqs = pyproject_requirements()
    python = SpecifierSet(pyproject()["requires-python"])
    assert within(env["conda"]["python"], python), f"{path.name}: python {env['conda']['python']} vs {python}"
    for name, spec in env["conda"].items():
        if name in reqs:
            assert within(spec, reqs[name].specifier), (
                f"{path.name}: {name}{spec} allows versions outside pyproject.toml's {reqs[name]}"
            )


@pytest.mark.parametrize("path", ENV_FILES, ids=lambda p: p.name)
def test_pip_install_of_the_package_pulls_nothing_from_pypi(path):
    """`pip: -e ../` installs celler with its dependencies: each must already come from conda, or pip would
    fetch it from PyPI (for torch: a multi-GB CUDA wheel) behind conda's back."""
    env = ENVS[path.name]
    if not any(re.search(r"(^|\s)(-e\s*)?\.\./?$", p) for p in env["pip"]):
        pytest.skip(f"{path.name} does not install the celler package")
    missing = [
        r
        for r in map(Requirement, pyproject()["dependencies"])
        if PIP_TO_CONDA.get(r.name.lower(), r.name.lower()) not in env["conda"]
    ]
    assert not missing, f"{path.name}: pip would install {', '.join(map(str, missing))} from PyPI; add them"


# --- rules --------------------------------------------------------------------------------------------------


def parse_rules(path: Path) -> dict[str, dict]:
    """name -> {directive: first value line} for each rule / checkpoint of a .smk file (snakefmt layout)."""
    rules, name, body = {}, None, []
    lines = path.read_text().splitlines() + [""]

    def flush():
        if name is None:
            return
        text = "\n".join(body)
        info = {"file": path, "body": text, "directives": set()}
        for m in re.finditer(r"^    (\w+):\s*(.*)$", text, re.MULTILINE):
            key, rest = m.group(1), m.group(2)
            info["directives"].add(key)
            if key in ("conda", "script") and not rest:  # value on the next line
                nxt = text[m.end() :].lstrip("\n").splitlines()[0].strip().rstrip(",")
                info[key] = nxt
            elif key in ("conda", "script"):
                info[key] = rest.strip().rstrip(",")
        rules[name] = info

    for line in lines:
        m = re.match(r"(?:rule|checkpoint)\s+(\w+)\s*:", line)
        use = re.match(r"use rule (\w+) as (\w+)", line)
        if m or use or (line and not line[0].isspace() and not line.startswith("#")):
            flush()
            name, body = (m.group(1), []) if m else (None, [])
            if use:
                name, body = use.group(2), [f"    __base__: {use.group(1)}"]
        elif name is not None:
            body.append(line)
    flush()
    return rules


RULES = {n: r for f in RULE_FILES for n, r in parse_rules(f).items()}


def _literal(text: str) -> str:
    return ast.literal_eval(text)


def rule_env(rule: dict) -> Path | None:
    if "conda" not in rule and "__base__" in rule["directives"]:
        return rule_env(RULES[re.search(r"__base__: (\w+)", rule["body"]).group(1)])
    if "conda" not in rule:
        return None
    return (rule["file"].parent / _literal(rule["conda"])).resolve()


def rule_scripts(rule: dict) -> list[Path]:
    """The Python scripts a rule runs: its script: directive and any scripts/*.py its shell command names."""
    out = []
    if "script" in rule:
        out.append((rule["file"].parent / _literal(rule["script"])).resolve())
    out += [REPO / "scripts" / f"{m}.py" for m in re.findall(r"scripts/(\w+)\.py", rule["body"])]
    # a module that does not exist still yields its .py path, so the "script exists" test reports it
    out += [module_file(m) or SRC.joinpath(*m.split(".")).with_suffix(".py")
            for m in re.findall(r"python3? -m (celler(?:\.\w+)*)", rule["body"])]
    return sorted({p for p in out if p.suffix == ".py"})


def test_rule_files_were_parsed():
    assert {"qc", "map_genes", "tokenize", "pretrain", "finetune"} <= set(RULES), sorted(RULES)
    assert rule_scripts(RULES["pretrain"]) == [REPO / "scripts/pretrain.py"]


@pytest.mark.parametrize("name", sorted(RULES))
def test_every_rule_has_an_existing_env(name):
    rule = RULES[name]
    if not rule["directives"] & set(ACTIONS) and "__base__" not in rule["directives"]:
        pytest.skip(f"{name} runs nothing")
    if "run" in rule["directives"]:
        pytest.skip(f"{name} has a run: block (runs in Snakemake's own environment)")
    env = rule_env(rule)
    assert env is not None, f"rule {name} ({rule['file'].name}) has no conda: directive"
    assert env.exists(), f"rule {name}: conda env {env} does not exist"
    assert env.parent == REPO / "envs", f"rule {name}: env {env} is outside envs/"


# --- imports ------------------------------------------------------------------------------------------------


def module_file(name: str) -> Path | None:
    base = SRC.joinpath(*name.split("."))
    for p in (base.with_suffix(".py"), base / "__init__.py"):
        if p.exists():
            return p
    return None


def _imports(nodes, *, into_functions: bool) -> list[tuple[str, list[str]]]:
    """(module, imported names) of every import among ``nodes``; function bodies only when asked."""
    out = []
    stack = list(nodes)
    while stack:
        node = stack.pop()
        if isinstance(node, ast.Import):
            out += [(a.name, []) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.append((node.module, [a.name for a in node.names]))
        elif isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            continue
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda) and not into_functions:
            continue
        stack.extend(ast.iter_child_nodes(node))
    return out


class ImportGraph:
    """Third-party top-level modules a script needs, following its celler imports."""

    def __init__(self):
        self._trees: dict[Path, ast.Module] = {}

    def tree(self, path: Path) -> ast.Module:
        if path not in self._trees:
            self._trees[path] = ast.parse(path.read_text(), filename=str(path))
        return self._trees[path]

    def third_party(self, script: Path) -> dict[str, str]:
        """top-level module -> the file that imports it."""
        found: dict[str, str] = {}
        seen: set[tuple[Path, bool]] = set()
        # (file, its imports to follow, whether the file was reached through a lazy import: then the lazy
        # imports of all its functions count too, as the job loaded that module on purpose)
        todo = [(script, _imports(self.tree(script).body, into_functions=True), False)]
        while todo:
            path, imports, lazy = todo.pop()
            for module, names in imports:
                top = module.split(".")[0]
                if top in FIRST_PARTY:
                    for target, funcs in self._celler_targets(module, names):
                        if (target, lazy) not in seen:
                            seen.add((target, lazy))
                            todo.append((target, _imports(self.tree(target).body, into_functions=lazy), lazy))
                        for f in funcs:  # the lazy imports of the functions taken from that module
                            todo.append((target, _imports(f.body, into_functions=True), True))
                elif top not in sys.stdlib_module_names and top != "__future__":
                    found.setdefault(top, str(path.relative_to(REPO)))
        return found

    def _celler_targets(self, module: str, names: list[str]):
        out = []
        mod_file = module_file(module)
        parts = module.split(".")
        for i in range(1, len(parts)):  # importing a.b.c runs a/__init__ and a/b/__init__ first
            parent = module_file(".".join(parts[:i]))
            if parent is not None:
                out.append((parent, []))
        if mod_file is None:
            return out
        funcs = []
        tree = self.tree(mod_file)
        for name in names:
            sub = module_file(f"{module}.{name}")
            if sub is not None:  # `from celler.evaluate.baselines import actinn`: a submodule
                out.append((sub, []))
            funcs += [
                n for n in tree.body if isinstance(n, ast.FunctionDef | ast.ClassDef) and n.name == name
            ]
        out.append((mod_file, funcs))
        return out


GRAPH = ImportGraph()
SCRIPT_RULES = [(n, s) for n, r in sorted(RULES.items()) for s in rule_scripts(r)]


def test_every_rule_script_exists():
    missing = [f"{n}: {s}" for n, s in SCRIPT_RULES if not s.exists()]
    assert not missing, missing


@pytest.mark.parametrize(("name", "script"), SCRIPT_RULES, ids=[f"{n}-{s.stem}" for n, s in SCRIPT_RULES])
def test_rule_env_provides_the_scripts_imports(name, script):
    env_path = rule_env(RULES[name])
    if env_path is None or not env_path.exists() or not script.exists():
        pytest.skip("reported by the tests above")
    conda = set(ENVS[env_path.name]["conda"])
    missing = {}
    for module, where in GRAPH.third_party(script).items():
        wanted = CONDA_NAMES.get(module, {module.lower().replace("_", "-")})
        if not wanted & conda:
            missing[module] = f"{' or '.join(sorted(wanted))} (imported in {where})"
    assert not missing, f"rule {name} uses envs/{env_path.name}, which lacks: {missing}"


def test_import_graph_follows_celler_modules():
    """The check sees through the thin scripts: tokenisation needs tqdm (celler.data.tokens), not torch."""
    tokenize = GRAPH.third_party(REPO / "scripts/tokenize_cells.py")
    assert {"numpy", "pandas", "scipy", "anndata", "tqdm"} <= set(tokenize), tokenize
    assert "torch" not in tokenize
    assert "torch" in GRAPH.third_party(REPO / "scripts/finetune.py")
    assert rule_scripts(RULES["shard_tokenize"]) == [SRC / "celler/data/shards.py"]
