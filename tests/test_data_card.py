"""data/card.py: the dataset card's front matter, statistics and provenance, and `--stats`."""
import glob
import hashlib
import json
from dataclasses import asdict
from pathlib import Path

import pytest
import yaml

from reasonlm import data
from reasonlm.config import Recipe
from reasonlm.data.generate import GENERATOR_VERSION
from tests.data_helpers import cfg


def test_card_has_stats_provenance_and_hub_configs(tmp_path, capsys):
    c = cfg()
    path = Path(data.run(Recipe(out_dir=str(tmp_path / "run"), data=c)))
    card = (path / "README.md").read_text()
    assert card.startswith("---\n")
    meta = yaml.safe_load(card.split("---\n")[1])
    assert meta["license"] == "apache-2.0" and meta["size_categories"] == ["n<1K"]
    default = next(x for x in meta["configs"] if x["config_name"] == "default")
    for entry in default["data_files"]:  # every split's files exist under the card's globs
        assert glob.glob(str(path / entry["path"])), entry
    stats = json.loads((path / "stats.json").read_text())
    settings = {k: v for k, v in asdict(c).items() if k != "workers"}
    chash = hashlib.sha256(json.dumps(settings, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    assert stats["provenance"]["config_sha256"] == chash and chash in card
    assert stats["provenance"]["generator_version"] == GENERATOR_VERSION
    q = stats["splits"]["train"]["lengths"]["question_chars"]
    assert q["min"] <= q["p50"] <= q["p95"] <= q["max"] and q["min"] <= q["mean"] <= q["max"]
    assert stats["splits"]["train"]["by_steps"] == {str(s): 100 for s in range(1, 7)}
    for text in ("| split | measure | min | mean | p50 | p95 | max |", "| train | completion_chars |",
                 "| test_ood | 20 | arithmetic 20 | 7: 10, 8: 10 |", "Apache-2.0", "## Provenance"):
        assert text in card
    capsys.readouterr()
    data.print_stats(str(path))
    printed = capsys.readouterr().out
    assert "| train | question_words |" in printed and chash in printed
    with pytest.raises(data.DataError, match="no stats.json"):
        data.print_stats(str(tmp_path))
