"""Production answers with the history a request carries (``recent=``) exactly as the replay scores
a row after the user's earlier rows of the period (sml-method.md section 6; issue 24, item 4).

Every registered strategy whose declared history rule is not "none" and that can run production
updates (it implements ``_grow``) is checked against a replay over the same periods, so a history
strategy added later is covered without editing this file. Scores are compared within 1e-5
(absolute, plus 1e-5 relative): iALS folds users in with one batched solve per chunk of users,
whose rounding depends on which users share the chunk.
"""

import numpy as np
import pytest
import torch

from _production_data import synthetic_log, tiny_settings, write_periods
from smlrec.errors import DataError
from smlrec.production import Recommender, init_registry, update_once
from smlrec.strategies import STRATEGIES
from test_production import HISTORY, N_PERIODS, _can_grow, _replay_strategy

TOLERANCE = {"atol": 1e-5, "rtol": 1e-5}


def _reads_history(name: str) -> bool:
    return not STRATEGIES[name].history.strip().lower().startswith("none")


# A strategy that counts every user's earlier rows of the scored period (the new-item priors,
# Strategy.period_counts) is left out: a registry learns a period's rows only at update, so its
# production scores differ from the replay's by design (docs/new-items.md).
HISTORY_STRATEGIES = [name for name in STRATEGIES
                      if _reads_history(name) and _can_grow(name) and not STRATEGIES[name].cls.period_counts]


def test_the_history_strategies_are_the_expected_ones():
    # a guard against the list silently shrinking (e.g. a renamed rule); gru4rec and caser read
    # history but cannot grow their tables, so they cannot run production updates
    assert {"itemknn", "sknn", "ease", "ials", "sml-blend"} <= set(HISTORY_STRATEGIES)
    assert not {"sml", "fine-tune", "pop", "itemknn+new"} & set(HISTORY_STRATEGIES)


class Setup:
    """A registry after init (periods 0..3) and update (period 4), and the replay's strategy that
    serves period 5 (updated through period 4), with period 5 as the replay holds it."""

    def __init__(self, strategy: str, tmp_path) -> None:
        frame = synthetic_log(N_PERIODS)
        full_log = tmp_path / "full.csv"
        frame.to_csv(full_log, index=False)
        history, batches = write_periods(frame, tmp_path / "data", HISTORY)
        settings = tiny_settings(strategy, HISTORY)
        init_registry(history, tmp_path / "reg", strategy, settings)
        update_once(tmp_path / "reg", batches[0])
        self.registry = tmp_path / "reg"
        self.replayed, self.timeline = _replay_strategy(strategy, full_log, settings, tmp_path)
        self.served = Recommender.from_registry(self.registry)
        self.n_users, self.n_items = self.served.checkpoint.n_users, self.served.checkpoint.n_items
        self.last = self.timeline.periods[-1]

    def replay_row(self, r: int) -> torch.Tensor:
        """The replay's scores of row ``r`` of period 5 for every item the registry knows."""
        with torch.no_grad():
            return self.replayed.score(self.last, slice(r, r + 1), torch.arange(self.n_items)[None, :])[0].float()

    def earlier(self, r: int) -> np.ndarray:
        """Item indices of the rows of period 5 before ``r`` with ``r``'s user, oldest first."""
        users = self.last.users[:r]
        return np.asarray(self.last.items[:r][users == self.last.users[r]], np.int64)

    def rows_with_history(self, known_user: bool) -> list[int]:
        """Rows of period 5 with earlier rows of their user in the period, all on items the
        registry knows; users the registry knows (or not), the longest in-period histories first."""
        found = []
        for r in range(len(self.last)):
            user, before = int(self.last.users[r]), self.earlier(r)
            if (user < self.n_users) == known_user and len(before) and (before < self.n_items).all():
                found.append((-len(before), r))
        return [r for _, r in sorted(found)]

    def raw_user(self, user: int):
        return self.timeline.log.user_ids[user]

    def raw_items(self, items: np.ndarray) -> list:
        return [self.timeline.log.item_ids[i] for i in items.tolist()]


@pytest.fixture(scope="module", params=HISTORY_STRATEGIES)
def setup(request, tmp_path_factory):
    return Setup(request.param, tmp_path_factory.mktemp(request.param))


def test_recent_items_score_as_the_replay_scores_a_row_after_earlier_rows_of_its_period(setup):
    rows = setup.rows_with_history(known_user=True)[:6]
    assert rows and len(setup.earlier(rows[0])) >= 2       # the data has users with in-period history
    for r in rows:
        user = int(setup.last.users[r])
        production = setup.served.recent_scores(np.array([user]), [setup.earlier(r)])[0]
        expected = setup.replay_row(r)
        assert torch.allclose(torch.from_numpy(production), expected, **TOLERANCE), (r, user)
        # and they matter: without them the answer differs (otherwise this test could not fail)
        assert not torch.allclose(setup.served.scores(np.array([user]))[0], expected, **TOLERANCE), (r, user)
    # the same through the public API with raw ids, several users in one request
    users = [setup.raw_user(int(setup.last.users[r])) for r in rows]
    recent = [setup.raw_items(setup.earlier(r)) for r in rows]
    answers = setup.served.top_k(users, k=10, exclude_seen=False, recent=recent)
    for r, answer in zip(rows, answers):
        assert answer.recent_used is True and answer.fallback is False
        top = torch.topk(setup.replay_row(r), 10).values.tolist()
        assert answer.scores == pytest.approx(top, abs=1e-5, rel=1e-5)


def test_a_user_the_version_does_not_know_is_scored_from_recent_items_as_the_replay_does(setup):
    rows = setup.rows_with_history(known_user=False)[:4]
    assert rows
    for r in rows:
        user = int(setup.last.users[r])
        answer = setup.served.top_k([setup.raw_user(user)], k=10, exclude_seen=False,
                                    recent=[setup.raw_items(setup.earlier(r))])[0]
        assert answer.fallback is True and answer.recent_used is True
        top = torch.topk(setup.replay_row(r), 10).values.tolist()
        assert answer.scores == pytest.approx(top, abs=1e-5, rel=1e-5)
    # the scratch rows never change what a known user gets
    known = setup.rows_with_history(known_user=True)[0]
    production = setup.served.recent_scores(np.array([int(setup.last.users[known])]), [setup.earlier(known)])[0]
    assert torch.allclose(torch.from_numpy(production), setup.replay_row(known), **TOLERANCE)


def test_after_update_a_user_without_recent_gets_the_history_the_registry_keeps(setup):
    # rows of period 5 that are their (known) user's first row in the period: the replay scores
    # them from what it kept of periods <= 4, as the registry must with no recent items given
    first = [r for r in range(len(setup.last)) if int(setup.last.users[r]) < setup.n_users
             and len(setup.earlier(r)) == 0]
    assert len(first) >= 5
    users = setup.last.users[first]
    production = setup.served.scores(users)
    for position, r in enumerate(first):
        assert torch.allclose(production[position], setup.replay_row(r), **TOLERANCE), r
    answers = setup.served.top_k([setup.raw_user(int(u)) for u in users[:3]], k=5, exclude_seen=False)
    for r, answer in zip(first, answers):
        assert answer.recent_used is None
        assert answer.scores == pytest.approx(torch.topk(setup.replay_row(r), 5).values.tolist(), abs=1e-5, rel=1e-5)


def test_recent_items_are_excluded_and_a_user_asked_twice_keeps_each_history(setup):
    r = setup.rows_with_history(known_user=True)[0]
    user = setup.raw_user(int(setup.last.users[r]))
    recent = setup.raw_items(setup.earlier(r))
    n = setup.n_items
    names = {setup.served.item_ids[i] for i in setup.earlier(r).tolist()}   # the registry's own ids
    kept = setup.served.top_k([user], k=n, exclude_seen=False, recent=[recent])[0]
    assert names <= set(kept.items)
    excluded = setup.served.top_k([user], k=n, exclude_seen=True, recent=[recent])[0]
    assert not names & set(excluded.items) and excluded.items
    # the same user twice in one request, once with and once without recent items, and a third
    # time with other ones: each answer is the one it gets alone
    other = recent[:1]
    both = setup.served.top_k([user, user, user], k=10, exclude_seen=False, recent=[recent, None, other])
    alone = [setup.served.top_k([user], k=10, exclude_seen=False, recent=[x])[0] for x in (recent, None, other)]
    for got, want in zip(both, alone):
        assert got.items == want.items and got.scores == pytest.approx(want.scores, abs=1e-6)


def test_an_unknown_recent_item_is_an_error_naming_it(setup):
    user = setup.raw_user(0)
    with pytest.raises(DataError, match="unknown item 'no-such-item' in the recent items of user"):
        setup.served.top_k([user], k=5, recent=[["no-such-item"]])


def test_consecutive_queries_through_the_generic_path_do_not_share_cached_contexts(setup):
    # a strategy caches the contexts of the period it scores; each query is a new period with the
    # same index and start, so two one-user queries must not get the first user's contexts
    first = setup.served.scores(np.array([0]))
    second = setup.served.scores(np.array([1]))
    fresh = Recommender.from_registry(setup.registry).scores(np.array([1]))
    assert torch.equal(second, fresh) and not torch.equal(first, second)


@pytest.mark.parametrize("strategy", ["fine-tune", "pop-recent"])
def test_a_strategy_that_reads_no_history_ignores_recent_items_and_says_so(tmp_path, strategy):
    frame = synthetic_log(N_PERIODS)
    history, _ = write_periods(frame, tmp_path / "data", HISTORY)
    init_registry(history, tmp_path / "reg", strategy, tiny_settings(strategy, HISTORY))
    served = Recommender.from_registry(tmp_path / "reg")
    assert not served.reads_history
    user, recent = served.checkpoint.user_ids[0], list(served.checkpoint.item_ids[:3])
    plain, with_recent, cold = served.top_k([user, user, "nobody"], k=served.n_items, exclude_seen=False,
                                            recent=[None, recent, recent])
    assert plain.recent_used is None and with_recent.recent_used is False and cold.recent_used is False
    assert with_recent.items == plain.items and with_recent.scores == pytest.approx(plain.scores)
    assert cold.fallback
    cold_alone = served.top_k(["nobody"], k=served.n_items, exclude_seen=False)[0]
    assert cold.items == cold_alone.items
    # with exclude_seen the recent items leave the answer, the rest keeps its order
    excluded = served.top_k([user], k=served.n_items, recent=[recent])[0]
    usual = served.top_k([user], k=served.n_items)[0]
    assert excluded.items == [item for item in usual.items if item not in set(recent)]



def test_an_mf_strategy_with_the_fold_in_setting_uses_recent_items(tmp_path):
    # fine-tune's registered rule says "none"; its settings (history = fold-in) decide otherwise
    frame = synthetic_log(N_PERIODS)
    history, _ = write_periods(frame, tmp_path / "data", HISTORY)
    settings = tiny_settings("fine-tune", HISTORY)
    settings["strategy"]["fine-tune"]["history"] = "fold-in"
    init_registry(history, tmp_path / "reg", "fine-tune", settings)
    served = Recommender.from_registry(tmp_path / "reg")
    assert served.reads_history
    user, recent = served.checkpoint.user_ids[0], list(served.checkpoint.item_ids[:3])
    plain, with_recent = served.top_k([user, user], k=served.n_items, exclude_seen=False, recent=[None, recent])
    assert with_recent.recent_used is True
    assert dict(zip(plain.items, plain.scores)) != pytest.approx(dict(zip(with_recent.items, with_recent.scores)))



# -- the front doors: HTTP and `smlrec recommend` --------------------------------------------------
@pytest.fixture(scope="module")
def knn(tmp_path_factory):
    return Setup("itemknn", tmp_path_factory.mktemp("knn-front"))


def _user_and_recent(setup) -> tuple:
    r = setup.rows_with_history(known_user=True)[0]
    user = int(setup.last.users[r])
    items = [int(setup.served.item_ids[i]) for i in setup.earlier(r).tolist()]
    return r, int(setup.served.checkpoint.user_ids[user]), items


def test_http_recent_items_in_the_query_and_per_user_in_the_batch(knn):
    from fastapi.testclient import TestClient

    from smlrec.production.serve import Limits, create_app

    r, user, recent = _user_and_recent(knn)
    expected = torch.topk(knn.replay_row(r), 10).values.tolist()
    client = TestClient(create_app(knn.registry, limits=Limits(max_recent=len(recent))))
    got = client.get("/recommend", params={"user": str(user), "k": 10, "include_seen": "true",
                                           "recent": [str(item) for item in recent]}).json()
    assert got["recent_used"] is True and got["fallback"] is False
    assert [x["score"] for x in got["items"]] == pytest.approx(expected, abs=1e-5, rel=1e-5)
    plain = client.get("/recommend", params={"user": str(user), "k": 10, "include_seen": "true"}).json()
    assert "recent_used" not in plain and plain["items"] != got["items"]
    batch = client.post("/recommend/batch", json={"users": [user, user, "nobody"], "k": 10, "include_seen": True,
                                                  "recent": [recent, None, recent]}).json()
    first, second, cold = batch["results"]
    assert first["items"] == got["items"] and first["recent_used"] is True
    assert "recent_used" not in second and second["items"] == plain["items"]
    assert cold["fallback"] is True and cold["recent_used"] is True
    # refusals: a 422 naming the limit, the unknown item, or the mismatch
    over = client.get("/recommend", params={"user": str(user), "recent": [str(i) for i in recent * 2]})
    assert over.status_code == 422 and "--max-recent" in over.json()["detail"]
    unknown = client.post("/recommend/batch", json={"users": [user], "recent": [["no-such-item"]]})
    assert unknown.status_code == 422 and "unknown item 'no-such-item'" in unknown.json()["detail"]
    mismatch = client.post("/recommend/batch", json={"users": [user, user], "recent": [recent]})
    assert mismatch.status_code == 422 and "1 entries for 2 users" in mismatch.json()["detail"]


def test_http_and_cli_a_strategy_that_reads_no_history_say_recent_items_are_not_used(tmp_path, capsys):
    from fastapi.testclient import TestClient

    from smlrec.cli import main
    from smlrec.production.serve import create_app

    history, _ = write_periods(synthetic_log(N_PERIODS), tmp_path / "data", HISTORY)
    init_registry(history, tmp_path / "reg", "fine-tune", tiny_settings("fine-tune", HISTORY))
    client = TestClient(create_app(tmp_path / "reg"))
    got = client.get("/recommend", params={"user": "1000", "k": 5, "recent": ["5000", "5001"]}).json()
    plain = client.get("/recommend", params={"user": "1000", "k": 50}).json()
    assert got["recent_used"] is False
    assert [x["item"] for x in got["items"]] == [x["item"] for x in plain["items"]
                                                 if x["item"] not in (5000, 5001)][:5]
    assert main(["recommend", "--registry", str(tmp_path / "reg"), "--user", "1000", "--k", "5",
                 "--recent", "5000,5001"]) == 0
    out = capsys.readouterr()
    assert "note: strategy 'fine-tune' reads no history (none" in out.err
    assert [int(line.split(",")[2]) for line in out.out.strip().splitlines()[1:]] == \
        [x["item"] for x in got["items"]]


def test_cli_recommend_with_recent_items(knn, tmp_path, capsys):
    import pandas as pd

    from smlrec.cli import main

    r, user, recent = _user_and_recent(knn)
    expected = torch.topk(knn.replay_row(r), 5).values.tolist()
    reg = str(knn.registry)
    assert main(["recommend", "--registry", reg, "--user", str(user), "--k", "5", "--include-seen",
                 "--recent", ",".join(str(i) for i in recent)]) == 0
    out = capsys.readouterr()
    lines = out.out.strip().splitlines()
    assert lines[0] == "user,rank,item,score,fallback,version" and len(lines) == 6
    assert [float(line.split(",")[3]) for line in lines[1:]] == pytest.approx(expected, abs=1e-5, rel=1e-5)
    assert "note:" not in out.err
    # a file of user,item rows for a file of users: the same answer, and the other user's own
    users = tmp_path / "users.txt"
    users.write_text(f"user\n{user}\n1001\n")
    rows = tmp_path / "recent.csv"
    rows.write_text("user,item\n" + "".join(f"{user},{item}\n" for item in recent) + "9999,5000\n")
    csv_out = tmp_path / "recs.csv"
    assert main(["recommend", "--registry", reg, "--users", str(users), "--k", "5", "--include-seen",
                 "--recent-file", str(rows), "--out", str(csv_out)]) == 0
    recs = pd.read_csv(csv_out)
    assert list(recs.loc[recs["user"] == user, "score"]) == pytest.approx(expected, abs=1e-5, rel=1e-5)
    alone = knn.served.top_k(["1001"], k=5, exclude_seen=False)[0]
    assert list(recs.loc[recs["user"] == 1001, "score"]) == pytest.approx(alone.scores, abs=1e-6)
    assert main(["recommend", "--registry", reg, "--users", str(users), "--recent", "5000"]) == 2
    assert "--recent goes with --user" in capsys.readouterr().err
    assert main(["recommend", "--registry", reg, "--user", str(user), "--recent", "no-such-item"]) == 2
    assert "unknown item 'no-such-item'" in capsys.readouterr().err


def test_recent_lists_must_match_the_users(knn):
    from smlrec.errors import ConfigError

    with pytest.raises(ConfigError, match="2 lists for 1 users"):
        knn.served.top_k(["1000"], recent=[["5000"], ["5001"]])
