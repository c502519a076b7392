"""The web page's A/B button picks a fair set: models that differ only in the norm (app.js abArms).

The picking logic is plain JavaScript; it is cut out of server/static/app.js and run with Node on the
shipped models' metadata, so it is tested where Node exists (the page itself has no build step).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from style_transfer.zoo import read_manifest
from style_transfer.zoo_build import ab_sets, load_plan

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(shutil.which("node") is None, reason="needs Node.js")


def ab_arms(models: list[dict]) -> list[str]:
    source = (ROOT / "server" / "static" / "app.js").read_text()
    start, end = source.index("  function stableJSON("), source.index("  function selectNormsOf(")
    script = source[start:end] + "\nconsole.log(JSON.stringify(abArms(JSON.parse(process.argv[1])).map((m) => m.name)));"
    out = subprocess.run(["node", "-e", script, json.dumps(models)], capture_output=True, text=True, check=True)
    return sorted(json.loads(out.stdout))


def _summary(name: str, norm: str, steps: int = 10, **training) -> dict:
    return {"name": name, "norm": norm, "steps": steps, "style": "s",
            "training": {"lr": 1e-3, "network": {"norm": norm, "width": 32}, **training}}


def test_the_set_with_most_norms_wins_over_a_same_style_model_of_another_recipe():
    models = [_summary("flagship", "instance", steps=50, lr=5e-4),
              _summary("set-instance", "instance"), _summary("set-group", "group"), _summary("set-layer", "layer")]
    assert ab_arms(models) == ["set-group", "set-instance", "set-layer"]
    # Key order in the metadata does not matter.
    reordered = dict(reversed(list(models[2]["training"].items())))
    assert ab_arms(models[:2] + [{**models[2], "training": reordered}] + models[3:]) == [
        "set-group", "set-instance", "set-layer"]


def test_without_a_shared_recipe_it_takes_the_longest_trained_model_per_norm():
    models = [_summary("a", "instance", steps=5, lr=1.0), _summary("b", "instance", steps=9, lr=2.0),
              _summary("c", "batch", steps=1, lr=3.0)]
    assert ab_arms(models) == ["b", "c"]


def test_on_the_shipped_weights_it_picks_the_plans_ab_set():
    entries = read_manifest(ROOT / "weights")["models"]
    models = [{"name": e["name"], "norm": e["norm"], "steps": e["steps"], "style": e["style"],
               "training": e["settings"]} for e in entries]
    shipped = {e["name"] for e in entries}
    for arms in ab_sets(load_plan(ROOT / "weights" / "zoo.toml")):
        names = sorted(m.name for m in arms if m.name in shipped)
        style = next(e["style"] for e in entries if e["name"] == names[0])
        assert ab_arms([m for m in models if m["style"] == style]) == names
