"""sml-blend: the weights are fitted on D_{t+1} with the models of t, no history leak, extremes,
for the default two-model form and the K-model mixtures."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from smlrec.errors import ConfigError
from smlrec.strategies import blend, create_strategy, neighbours, strategy_settings
from smlrec.strategies.blend import earlier_in_period_reference, normalise_scores
from smlrec.testing import ContractWorld, fast_overrides

# the default two-model form, every model under softmax, the per-model sigmoid gates with the
# share feature, and the counted new-item priors as components
CONFIGS = {"two": {"components": "itemknn"}, "default": {},
           "sigmoid": {"components": "itemknn,pop-recent,ease", "gate": "sigmoid", "features": "counts+share"},
           "priors": {"components": "itemknn,new-items,period-pop"}}


@pytest.fixture(scope="module", params=list(CONFIGS))
def world(request):
    return ContractWorld({"sml-blend": {**fast_overrides("sml-blend"), **CONFIGS[request.param]}})


def _spied(world, monkeypatch):
    """A started blend whose meta-fit records what it saw and how far the inner models were."""
    strategy = world.fresh("sml-blend")
    seen = []
    original = strategy.fit_weights

    def spy(period):
        seen.append({"period": period.index, "users": period.users.copy(), "items": period.items.copy(),
                     "updates": [m.periods_seen for m in strategy.models]})
        original(period)

    monkeypatch.setattr(strategy, "fit_weights", spy)
    return strategy, seen


def test_weights_are_fitted_on_the_next_period_with_the_models_of_the_previous_one(world, monkeypatch):
    strategy, seen = _spied(world, monkeypatch)
    periods = world.replayed
    for k, period in enumerate(periods):
        # the weights that serve this period come from fits on earlier periods only
        assert all(entry["period"] < period.index for entry in seen)
        w_served = strategy.W.clone()
        world.score(strategy, period)
        assert torch.equal(strategy.W, w_served)            # scoring never fits
        strategy.update(period)
        last = seen[-1]
        assert last["period"] == period.index and len(seen) == k + 1
        np.testing.assert_array_equal(last["users"], period.users)
        np.testing.assert_array_equal(last["items"], period.items)
        # the fit ran before the inner models received D_{t+1}: each had k updates
        assert last["updates"] == [k] * len(strategy.models)
    assert strategy.sml.periods_seen == len(periods)


def test_the_fit_uses_the_period_it_is_given(world):
    """Different rows of D_{t+1} give different weights (the fit reads them), equal rows equal ones."""
    period = world.replayed[0]
    shuffled = replace(period, items=np.random.default_rng(0).permutation(period.items))
    weights = []
    for rows in (period, period, shuffled):
        strategy = world.fresh("sml-blend")
        strategy.update(rows)
        weights.append(strategy.W.clone())
    assert torch.equal(weights[0], weights[1])
    assert not torch.equal(weights[0], weights[2])


def test_a_fit_that_saw_the_served_period_is_caught(world, monkeypatch):
    """The check of the first test fails for a strategy that fits on the period it serves."""
    strategy, seen = _spied(world, monkeypatch)
    period = world.replayed[0]
    original_score = strategy.score

    def leaky_score(p, rows, candidates):
        strategy.fit_weights(p)                         # a leak: fitting on the scored period
        return original_score(p, rows, candidates)

    monkeypatch.setattr(strategy, "score", leaky_score)
    world.score(strategy, period)
    assert any(entry["period"] >= period.index for entry in seen)


def _altered_scores(world, row: int, period_index: int, leak: bool, monkeypatch) -> tuple[torch.Tensor, ...]:
    """Scores of a scored period and of a copy whose rows >= ``row`` have other items (and rows
    > ``row`` other users)."""
    periods = world.replayed
    period = next(p for p in periods if p.index == period_index)
    n_items, n_users = world.timeline.log.n_items, world.timeline.log.n_users
    later = np.arange(len(period)) > row
    altered = replace(period, items=(period.items + np.where(np.arange(len(period)) >= row, 7, 0)) % n_items,
                      users=np.where(later, period.users[row], period.users) % n_users)
    candidates = torch.from_numpy(np.random.default_rng(2).integers(0, n_items, (len(period), 15)))
    if leak:
        monkeypatch.setattr(blend, "_earlier_in_period", _leaky_counts)
    out = []
    for scored in (period, altered):
        strategy = world.fresh("sml-blend")
        for p in periods:
            if p.index == period_index:
                break
            strategy.update(p)
        out.append(strategy.score(scored, slice(0, len(period)), candidates))
    return out[0], out[1]


def _leaky_counts(users: np.ndarray) -> np.ndarray:
    """A deliberately leaking feature: every row of the user in the period, later ones included."""
    _, inverse, counts = np.unique(users, return_inverse=True, return_counts=True)
    return counts[inverse]


def test_scores_never_read_the_scored_row_or_a_later_one(world, monkeypatch):
    period = world.replayed[-1]
    row = len(period) // 2
    assert (period.users[:row] == period.users[row]).any()     # its user has earlier rows in the period
    honest = _altered_scores(world, row, period.index, False, monkeypatch)
    assert torch.equal(honest[0][: row + 1], honest[1][: row + 1])
    assert not torch.equal(honest[0][row + 1:], honest[1][row + 1:])
    leaky = _altered_scores(world, row, period.index, True, monkeypatch)
    assert not torch.equal(leaky[0][: row + 1], leaky[1][: row + 1])   # the check catches a leak
    monkeypatch.undo()
    monkeypatch.setattr(neighbours, "sequence_contexts", _leaky_contexts)
    leaky = _altered_scores(world, row, period.index, False, monkeypatch)
    assert not torch.equal(leaky[0][: row + 1], leaky[1][: row + 1])


_honest_contexts = neighbours.sequence_contexts


def _leaky_contexts(windows, users, items):
    contexts, touched, new_windows = _honest_contexts(windows, users, items)
    leaked = np.concatenate([contexts[:, 1:], np.asarray(items, np.int64)[:, None]], axis=1)
    return leaked, touched, new_windows


def _same_order(blended: torch.Tensor, alone: torch.Tensor) -> None:
    """Every pair of candidates the single model orders (by more than float noise) is ordered the
    same way by the blend, and every pair it ties is tied."""
    alone, blended = alone.double(), blended.double()
    diff_alone = alone[:, :, None] - alone[:, None, :]
    diff_blend = blended[:, :, None] - blended[:, None, :]
    scale = alone.abs().amax(dim=1)[:, None, None] + 1e-12
    clear = diff_alone.abs() > 1e-5 * scale
    assert clear.any()
    assert torch.equal(torch.sign(diff_blend[clear]), torch.sign(diff_alone[clear]))
    assert bool((diff_blend[diff_alone == 0] == 0).all())


def _one_hot(strategy, k: int) -> torch.Tensor:
    """``W`` that gives model ``k`` all the weight (exactly, in float64)."""
    W = torch.zeros_like(strategy.W)
    if strategy.settings.gate == "sigmoid":
        W[:, 0] = -1e3
        W[k, 0] = 1e3
    elif k < len(W):
        W[k, 0] = 1e3
    else:                      # the last model: every other logit far below its 0
        W[:, 0] = -1e3
    return W


@pytest.mark.parametrize("normalise", ["zscore", "rank"])
def test_one_hot_weights_rank_as_one_model_alone(world, normalise):
    settings = {**world.overrides["sml-blend"], "normalise": normalise}
    strategy = create_strategy("sml-blend", world.context("sml-blend"), settings)
    names = blend.parse_components(strategy.settings.components)
    strategy.start(world.timeline.pretrain_data, {k: v.clone() for k, v in world.initial.items()})
    periods = world.replayed
    for period in periods[:-1]:
        strategy.update(period)
    period = periods[-1]
    candidates = torch.from_numpy(world.candidates[period.index].astype(np.int64)).clamp_min(0)
    rows = slice(0, len(period))
    assert strategy.names == ("sml",) + names
    for k, model in enumerate(strategy.models):
        with torch.no_grad():
            alone = model.score(period, rows, candidates)
            strategy.W = _one_hot(strategy, k)
            weights = strategy.weights(strategy.features(period, rows))
            assert torch.equal(weights[:, k], torch.ones(len(period), dtype=torch.float64))
            _same_order(strategy.score(period, rows, candidates), alone)
            # pop-recent ranks every new user the same way (all tie); new-items carries nothing
            # from the last period, so a user with no row gets 0 everywhere
            if strategy.names[k] not in ("pop-recent", "new-items"):
                _same_order(strategy.score_new_users(candidates[:3]), model.score_new_users(candidates[:3]))


def test_one_component_is_the_two_model_sigmoid_form(world):
    """With one component the softmax weight of SML is sigmoid(w . x) of the original blend."""
    assert strategy_settings("sml-blend").components == blend.DEFAULT_COMPONENTS
    strategy = create_strategy("sml-blend", world.context("sml-blend"),
                               {**fast_overrides("sml-blend"), "components": "itemknn"})
    assert strategy.names == ("sml", "itemknn") and strategy.W.shape == (1, blend.N_FEATURES)
    x = torch.randn(50, blend.N_FEATURES, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    strategy.W = torch.randn(1, blend.N_FEATURES, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    a = torch.sigmoid(x @ strategy.W[0])
    torch.testing.assert_close(strategy.weights(x), torch.stack([a, 1 - a], dim=1), rtol=1e-12, atol=1e-12)
    z = torch.randn(2, 50, 7, dtype=torch.float64)
    torch.testing.assert_close(blend.mix(strategy.weights(x), z), blend.blend(a, z[0], z[1]), rtol=1e-12,
                               atol=1e-12)


def test_state_round_trip_scores_and_updates_as_the_original(world):
    periods = world.replayed
    original = world.fresh("sml-blend")
    original.update(periods[0])
    restored = world.fresh("sml-blend", start=False)
    restored.load_state_dict(original.state_dict())
    assert torch.equal(restored.W, original.W)
    torch.testing.assert_close(world.score(restored, periods[1]), world.score(original, periods[1]), rtol=0, atol=0)
    original.update(periods[1])
    restored.update(periods[1])
    assert torch.equal(restored.W, original.W)
    torch.testing.assert_close(world.score(restored, periods[2]), world.score(original, periods[2]), rtol=0, atol=0)


def test_a_state_of_other_models_is_refused(world):
    from smlrec.errors import CheckpointError

    other = "itemknn,sknn" if world.overrides["sml-blend"].get("components") != "itemknn,sknn" else "itemknn"
    source = create_strategy("sml-blend", world.context("sml-blend"),
                             {**world.overrides["sml-blend"], "components": other})
    target = world.fresh("sml-blend", start=False)
    with pytest.raises(CheckpointError, match="expected"):
        target.load_state_dict(source.state_dict())


def test_ease_is_left_out_with_a_note_above_its_max_items(world, caplog):
    settings = strategy_settings("sml-blend", {"components": "itemknn,ease"})
    assert blend.served_components(settings, 30_000) == (("itemknn", "ease"), ())
    assert blend.served_components(settings, 30_001) == (("itemknn",), ("ease",))
    context = replace(world.context("sml-blend"), n_items=30_001)
    with caplog.at_level("WARNING", logger="smlrec.strategies.blend"):
        strategy = create_strategy("sml-blend", context, {**fast_overrides("sml-blend"), "components": "itemknn,ease"})
    assert strategy.names == ("sml", "itemknn") and strategy.dropped == ("ease",)
    assert "ease left out of the blend" in caplog.text and "30001 items" in caplog.text
    # ease the only component: SML alone, weight 1, and the meta-fit still runs
    alone = create_strategy("sml-blend", context, {**fast_overrides("sml-blend"), "components": "ease"})
    assert alone.names == ("sml",) and alone.W.shape == (0, blend.N_FEATURES)
    x = alone.new_user_features(4)
    assert torch.equal(alone.weights(x), torch.ones(4, 1, dtype=torch.float64))
    z = torch.randn(1, 4, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    W, _, losses = blend.fit_mixture(alone.W, alone.log_temperature, x, z, alone.settings)
    assert W.shape == (0, blend.N_FEATURES) and len(losses) == alone.settings.steps


def test_normalised_scores_by_hand():
    scores = torch.tensor([[1.0, 3.0, 3.0, 5.0], [2.0, 0.0, 9.0, 4.0]])
    valid = torch.tensor([[True, True, True, True], [True, True, False, True]])
    z = normalise_scores(scores, valid, "zscore")
    np.testing.assert_allclose(z[0].numpy(), [-2 / np.sqrt(2), 0, 0, 2 / np.sqrt(2)], rtol=1e-6)
    std = np.sqrt(((np.array([2.0, 0.0, 4.0]) - 2.0) ** 2).mean())
    np.testing.assert_allclose(z[1].numpy(), [0, -2 / std, 0, 2 / std], rtol=1e-6)
    r = normalise_scores(scores, valid, "rank")
    np.testing.assert_allclose(r[0].numpy(), [0, 1 / 3, 1 / 3, 1], rtol=1e-12)
    np.testing.assert_allclose(r[1].numpy(), [1 / 2, 0, 0, 1], rtol=1e-12)


def test_earlier_rows_in_the_period_match_the_slow_twin():
    users = np.random.default_rng(1).integers(0, 7, 300)
    np.testing.assert_array_equal(blend._earlier_in_period(users), earlier_in_period_reference(users))
    np.testing.assert_array_equal(blend._earlier_in_period(np.array([4, 4, 1, 4, 1])), [0, 1, 0, 2, 1])


def test_settings_are_validated_and_reach_the_inner_models():
    with pytest.raises(ConfigError, match="normalise"):
        strategy_settings("sml-blend", {"normalise": "softmax"})
    with pytest.raises(ConfigError, match="recency"):
        strategy_settings("sml-blend", {"knn_recency": 0.0})
    with pytest.raises(ConfigError, match="components"):
        strategy_settings("sml-blend", {"components": "itemknn,gru4rec"})
    with pytest.raises(ConfigError, match="no model twice"):
        strategy_settings("sml-blend", {"components": "ease,ease"})
    with pytest.raises(ConfigError, match="components"):
        strategy_settings("sml-blend", {"components": ""})
    with pytest.raises(ConfigError, match="gate"):
        strategy_settings("sml-blend", {"gate": "relu"})
    with pytest.raises(ConfigError, match="features"):
        strategy_settings("sml-blend", {"features": "all"})
    settings = strategy_settings("sml-blend", {"rounds": 3, "knn_history": 7})
    assert settings.sml_settings().rounds == 3 and settings.knn_settings_dict()["history"] == 7


def test_smoothed_recall_loss_by_hand():
    scores = torch.tensor([[1.0, 0.0, 2.0], [0.0, 0.0, 0.0]], dtype=torch.float64)
    rank0 = 1 / (1 + np.exp(1 / 0.5)) + 1 / (1 + np.exp(-1 / 0.5))
    rank1 = 1.0
    expected = -np.mean([1 / (1 + np.exp(-(1.5 - rank0))), 1 / (1 + np.exp(-(1.5 - rank1)))])
    assert float(blend.smoothed_recall_loss(scores, 1.5, 0.5)) == pytest.approx(expected, rel=1e-12)


def test_the_counted_priors_are_declared_as_period_counts(world):
    """A blend with new-items or period-pop counts the scored period's rows (production serves
    less: docs/new-items.md); the default list does not."""
    strategy = world.fresh("sml-blend")
    assert strategy.period_counts == any(name in blend.PRIORS for name in strategy.names)
    assert not create_strategy("sml-blend", world.context("sml-blend"), fast_overrides("sml-blend")).period_counts
