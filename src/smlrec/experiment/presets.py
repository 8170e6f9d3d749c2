"""Named bundles of settings that reproduce the paper's setups: ``--preset yelp`` / ``--preset adressa``.

A preset is one settings layer, laid out like the ``--config`` TOML file. Precedence::

    dataclass defaults  <  --preset  <  --config TOML  <  flags and --set

so anything a preset sets can be changed by a config file or a flag. The paper's SML settings
(sml-method.md section 4) are given once per preset and applied to every registered strategy whose
name starts with ``sml`` (SML and its ablations) when the layer is built; with no such strategy
registered they are simply left out.

Adressa's day cuts are taken in **Europe/Oslo** time (Adressa is a Norwegian newspaper and the
paper's 00-10h / 10-17h / 17-24h windows are reading times of its readers; the three weeks of
January 2017 are UTC+1, no daylight-saving change). Pass ``--timezone UTC`` to cut in UTC.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

from ..errors import ConfigError

SML_PREFIX = "sml"


@dataclass(frozen=True)
class Preset:
    """A named settings layer plus the SML settings for every ``sml*`` strategy."""

    description: str
    settings: dict
    sml: dict = field(default_factory=dict)


PRESETS: dict[str, Preset] = {
    "yelp": Preset(
        description="Yelp reviews: 40 equal-count periods; 10 pretrain / 20 offline / 3 validation / "
                    "7 test; SML 10 rounds, 1 step-1 and 1 step-2 epoch",
        settings={"data": {"format": "yelp", "periods": 40, "every": None, "day_cuts": None},
                  "plan": {"pretrain": 10, "offline": 20, "validation": 3, "test": 7}},
        sml={"rounds": 10, "step1_epochs": 1, "step2_epochs": 1},
    ),
    "adressa": Preset(
        description="Adressa news, 3 weeks: day cuts at 10h and 17h (Europe/Oslo), 63 periods; "
                    "21 pretrain / 27 offline / 5 validation / 10 test; SML 7 rounds, 2 + 2 epochs",
        settings={"data": {"format": "adressa", "day_cuts": [10, 17], "every": None,
                           "timezone": "Europe/Oslo"},
                  "plan": {"pretrain": 21, "offline": 27, "validation": 5, "test": 10}},
        sml={"rounds": 7, "step1_epochs": 2, "step2_epochs": 2},
    ),
}


def preset_layer(name: str, strategy_names: list[str] | None = None) -> dict:
    """The settings layer of preset ``name``.

    ``strategy_names`` defaults to the registered strategies; each whose name starts with
    ``sml`` gets the preset's SML settings under ``strategy.<name>``.
    """
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r} (known: {', '.join(sorted(PRESETS))})")
    preset = PRESETS[name]
    if strategy_names is None:
        from ..strategies import STRATEGIES

        strategy_names = list(STRATEGIES)
    sml_names = [s for s in strategy_names if s.startswith(SML_PREFIX)]
    layer = copy.deepcopy(preset.settings)
    if sml_names and preset.sml:
        layer["strategy"] = {s: dict(preset.sml) for s in sml_names}
    return layer
