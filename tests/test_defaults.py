"""One set of defaults: what config.yaml sets is what the package's configuration objects default to, so a
library caller of ``finetune()`` / ``pretrain()`` trains the model the workflow trains, and the README's
settings are both."""

from dataclasses import MISSING, fields

import pytest
import yaml
from conftest import ROOT

from celler.train.finetune import FinetuneConfig
from celler.train.pretrain import PretrainConfig

CONFIG = yaml.safe_load((ROOT / "config.yaml").read_text())
#: keys of config.yaml's sections that only the workflow reads (no package field): what each one is for
WORKFLOW_ONLY = {
    "finetune": {"gpus"},  # GPUs per fine-tuning job on a cluster
    "pretrain": {"per_tissue", "tissue_steps", "gpus", "settings"},  # which rules run, job resources, overrides
}


def mismatches(section: str, cls) -> list[tuple[str, object, object]]:
    defaults = {f.name: f.default_factory() if f.default is MISSING else f.default for f in fields(cls)}
    values = CONFIG[section]
    unknown = set(values) - set(defaults) - WORKFLOW_ONLY[section]
    assert not unknown, f"config.yaml {section}: keys the package does not know: {unknown}"
    return [(k, v, defaults[k]) for k, v in values.items()
            if k in defaults and k != "loss_params" and defaults[k] != v]


@pytest.mark.parametrize(("section", "cls"), [("finetune", FinetuneConfig), ("pretrain", PretrainConfig)])
def test_every_config_key_is_the_package_default(section, cls):
    assert mismatches(section, cls) == []  # (key, config.yaml, package)


def test_the_check_sees_a_drift(monkeypatch):
    monkeypatch.setitem(CONFIG, "finetune", {**CONFIG["finetune"], "readout": "profile"})
    assert mismatches("finetune", FinetuneConfig) == [("readout", "profile", "programs+profile")]


def test_the_paper_config_trains_the_shipped_model():
    """config/paper.yaml (a --configfile replaces config.yaml) fine-tunes and evaluates as config.yaml does."""
    paper = yaml.safe_load((ROOT / "config/paper.yaml").read_text())
    for section in ("finetune", "pretrain"):
        assert paper[section] == CONFIG[section], section
    assert paper["evaluate"]["baselines"] == CONFIG["evaluate"]["baselines"]
