"""Synthetic interaction logs with planted drift, at the paper's scale, written for speed.

The generator is a small latent-factor world, simulated period by period (a loop over the
periods, vectorised inside; never a loop over interactions)::

    topics  c_k  (unit vectors in R^dim)           items  i: topic k_i, popularity pop_i,
    users   u: plane (a_u, b_u) in R^dim,                    born in period birth_i,
               angular speed omega_u,                        alive [birth_i, birth_i + life_i)
               activity w_u (log-normal: heavy tail),
               alive [arrive_u, arrive_u + life_u)

    interest of u in period t:  p_u(t) = cos(theta) a_u + sin(theta) b_u,
                                theta  = omega_u * (t - arrive_u)
    a row of u in period t:     topic   ~ softmax_k(sharpness * <p_u(t), c_k>)   over topics
                                          with an item alive in t; with probability
                                          ``session_share`` the user's session topic of the
                                          period instead (one draw per (user, period))
                                item    ~ pop_i * freshness^(t - birth_i) among alive items of
                                          that topic

**Planted drift.** Each user's interest turns at a constant angular speed in its own plane, so
the change from period t-1 to t predicts the change from t to t+1: a method that learns how
embeddings move between periods can extrapolate it; a model fitted on all history averages it
away. ``stable`` turns slowly (Yelp-like, long-lived items, users stay); ``news`` turns fast,
items live one to three periods, many are born every period and fresh ones are favoured,
users come and go, and a user's rows in a period concentrate on one session topic
(Adressa-like short-term interest). ``drift`` has the sizes and lifetimes of ``stable`` but
interests that move: each user's interest turns fast (0.35 radians a period against 0.06), and
the topic mix rotates, every topic's weight swinging by a factor up to ``exp(2 topic_swing)``
over one cycle of the log's periods, each topic at its own phase::

    topic logit of u in period t:  sharpness * <p_u(t), c_k> + topic_swing * sin(2 pi t / T + phi_k)

so the items that are popular early are not the ones popular late (tests/test_synth.py measures
the overlap of the top items of the first and last periods against ``stable``).

**Exact shape.** Every period gets the same number of rows (the boundaries of
``split_equal_count``), so ``--periods N`` cuts the log back into exactly the generated periods;
the ``news`` regime's times fall into the windows 00-10h, 10-17h, 17-24h (UTC) of consecutive
days, so ``--day-cuts 10,17`` does too. Every user has a row in its arrival period and every item
a row in its birth period, so the log has exactly the users and items asked for, each first seen
in the period it arrives or is born in.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import ConfigError
from ..random import make_rng
from .periods import split_equal_count

REGIMES = ("stable", "news", "drift")
DAY_CUT_HOURS = (0, 10, 17, 24)  # the news regime's period windows inside each day (UTC)


@dataclass(frozen=True)
class SynthSettings:
    """What to generate. ``None`` fields take the regime's default (see ``REGIME_DEFAULTS``)."""

    regime: str = "stable"
    interactions: int = 50_000
    users: int = 2_000
    items: int = 3_000
    periods: int = 20
    seed: int = 2020
    dim: int = 16                         # latent dimension of users and topics
    topics: int = 48                      # item clusters
    start: int = 1_420_070_400            # unix seconds of the first period (2015-01-01 UTC)
    period_seconds: int = 14 * 86400      # stable regime: length of a period's time window
    initial_user_share: float | None = None  # share of users present from period 0
    initial_item_share: float | None = None  # share of items present from period 0
    item_life: tuple[int, int] | None = None  # news: an item lives lo..hi periods (uniform); None: forever
    user_life_mean: float | None = None   # mean periods a user stays (geometric); None: forever
    drift: float | None = None            # mean angular speed of interests, radians per period
    sharpness: float | None = None        # how peaked a user's topic choice is
    session_share: float | None = None    # share of a user's rows on its session topic of the period
    freshness: float | None = None        # item weight multiplier per period of age
    topic_swing: float | None = None      # amplitude of each topic's popularity cycle in its logit (0: none)
    activity_sigma: float = 1.2           # log-normal sigma of per-user activity (heavy tail)
    popularity_sigma: float = 1.5         # log-normal sigma of item popularity (skew)


REGIME_DEFAULTS: dict[str, dict] = {
    "stable": {"initial_user_share": 0.3, "initial_item_share": 0.3, "item_life": None,
               "user_life_mean": None, "drift": 0.06, "sharpness": 4.0, "session_share": 0.1,
               "freshness": 1.0, "topic_swing": 0.0},
    "news": {"initial_user_share": 0.02, "initial_item_share": 0.0, "item_life": (1, 3),
             "user_life_mean": 6.0, "drift": 0.3, "sharpness": 5.0, "session_share": 0.6,
             "freshness": 0.5, "topic_swing": 0.0},
    # stable's sizes and lifetimes; interests turn ~6x faster and the topic mix rotates once over
    # the log (the swing 1.5 makes a topic's weight vary ~20x between its peak and its trough).
    "drift": {"initial_user_share": 0.3, "initial_item_share": 0.3, "item_life": None,
              "user_life_mean": None, "drift": 0.35, "sharpness": 4.0, "session_share": 0.1,
              "freshness": 1.0, "topic_swing": 1.5},
}

SCALES: dict[str, dict] = {
    "yelp": {"regime": "stable", "interactions": 3_000_000, "users": 59_000, "items": 123_000,
             "periods": 40},
    "adressa": {"regime": "news", "interactions": 3_660_000, "users": 479_000, "items": 21_000,
                "periods": 63, "start": 1_483_228_800},  # 2017-01-01 UTC, 21 days
    "small": {"regime": "stable", "interactions": 50_000, "users": 2_000, "items": 3_000,
              "periods": 20},
}

SCALE_PLANS = {"yelp": "10,20,3,7", "adressa": "21,27,5,10", "small": "5,8,2,5"}
"""The paper's period roles (pretrain, offline, validation, test) for each preset."""


def synth_settings(scale: str | None = None, **overrides) -> SynthSettings:
    """Settings of preset ``scale`` (yelp, adressa, small) with ``overrides`` (None values ignored)."""
    values: dict = {}
    if scale is not None:
        if scale not in SCALES:
            raise ConfigError(f"unknown scale {scale!r} (known: {', '.join(SCALES)})")
        values.update(SCALES[scale])
    values.update({k: v for k, v in overrides.items() if v is not None})
    known = {f.name for f in dataclasses.fields(SynthSettings)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"unknown synth setting(s) {', '.join(unknown)}")
    return resolve(SynthSettings(**values))


def resolve(settings: SynthSettings) -> SynthSettings:
    """Fill the regime's defaults and check the sizes fit together."""
    if settings.regime not in REGIMES:
        raise ConfigError(f"unknown regime {settings.regime!r} (known: {', '.join(REGIMES)})")
    filled = {k: v for k, v in REGIME_DEFAULTS[settings.regime].items() if getattr(settings, k) is None}
    settings = dataclasses.replace(settings, **filled)
    s = settings
    for name in ("interactions", "users", "items", "periods", "dim", "topics"):
        if getattr(s, name) < 1:
            raise ConfigError(f"synth: {name} must be >= 1, got {getattr(s, name)}")
    if s.users < s.periods or s.items < s.periods:
        raise ConfigError(f"synth: need at least one user and one item per period "
                          f"({s.users} users, {s.items} items, {s.periods} periods)")
    if s.item_life is not None and not (1 <= s.item_life[0] <= s.item_life[1]):
        raise ConfigError(f"synth: item_life must be lo,hi with 1 <= lo <= hi, got {s.item_life}")
    if s.topic_swing < 0:
        raise ConfigError(f"synth: topic_swing must be >= 0, got {s.topic_swing}")
    for name in ("initial_user_share", "initial_item_share", "session_share"):
        if not 0.0 <= getattr(s, name) <= 1.0:
            raise ConfigError(f"synth: {name} must be in [0, 1], got {getattr(s, name)}")
    return settings


# ----------------------------------------------------------------------------------------------

def _arrivals(n: int, periods: int, initial_share: float) -> np.ndarray:
    """Arrival period of each of ``n`` entities: a share at period 0 (at least an even share),
    the rest evenly over the later periods.

    Every period gets at least one arrival, so each period has new users and new items.
    """
    initial = max(1, int(round(initial_share * n)), n // periods)
    initial = min(initial, n - (periods - 1))
    if periods == 1:
        return np.zeros(n, dtype=np.int64)
    rest = n - initial
    per_period = np.diff(np.floor(np.linspace(0, rest, periods)).astype(np.int64))
    counts = np.concatenate([[initial], per_period])
    return np.repeat(np.arange(periods, dtype=np.int64), counts)


def _period_windows(s: SynthSettings) -> tuple[np.ndarray, np.ndarray]:
    """Start and end (exclusive) unix seconds of each period's time window."""
    t = np.arange(s.periods, dtype=np.int64)
    if s.regime == "news":
        day, slot = t // 3, t % 3
        cuts = np.asarray(DAY_CUT_HOURS, dtype=np.int64) * 3600
        base = (s.start // 86400) * 86400 + day * 86400
        return base + cuts[slot], base + cuts[slot + 1]
    lo = s.start + t * s.period_seconds
    return lo, lo + s.period_seconds


def _weighted_choice(weights_cum: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` indices drawn with probabilities proportional to the weights (given cumulated)."""
    target = rng.random(n) * weights_cum[-1]
    return np.minimum(np.searchsorted(weights_cum, target, side="right"), len(weights_cum) - 1)


def generate(settings: SynthSettings) -> pd.DataFrame:
    """The synthetic log as a DataFrame with int64 columns user, item, time (sorted by time)."""
    s = resolve(settings)
    rng = make_rng(s.seed, "synth", s.regime)
    T = s.periods
    quotas = np.diff(split_equal_count(s.interactions, T))

    # -- users: arrival, lifetime, activity, interest trajectory
    user_arrive = _arrivals(s.users, T, s.initial_user_share)
    if s.user_life_mean is None:
        user_leave = np.full(s.users, T, dtype=np.int64)
    else:
        user_leave = user_arrive + rng.geometric(1.0 / max(s.user_life_mean, 1.0), s.users)
    activity = rng.lognormal(0.0, s.activity_sigma, s.users)
    plane_a = rng.standard_normal((s.users, s.dim)).astype(np.float32)
    plane_b = rng.standard_normal((s.users, s.dim)).astype(np.float32)
    plane_a /= np.linalg.norm(plane_a, axis=1, keepdims=True)
    plane_b -= (plane_b * plane_a).sum(1, keepdims=True) * plane_a   # orthogonal to a
    plane_b /= np.maximum(np.linalg.norm(plane_b, axis=1, keepdims=True), 1e-6)
    omega = (s.drift * rng.uniform(0.5, 1.5, s.users) * rng.choice([-1.0, 1.0], s.users)).astype(np.float32)

    # -- topics and items
    centroids = rng.standard_normal((s.topics, s.dim)).astype(np.float32)
    centroids /= np.linalg.norm(centroids, axis=1, keepdims=True)
    item_birth = _arrivals(s.items, T, s.initial_item_share)
    if s.item_life is None:
        item_death = np.full(s.items, T, dtype=np.int64)
    else:
        item_death = item_birth + rng.integers(s.item_life[0], s.item_life[1] + 1, s.items)
    item_topic = rng.integers(0, s.topics, s.items)
    popularity = rng.lognormal(0.0, s.popularity_sigma, s.items)
    # The topic phases come from their own stream, so the stable and news logs stay as they were.
    phase = make_rng(s.seed, "synth", s.regime, "swing").uniform(0.0, 2 * np.pi, s.topics)

    new_users = np.bincount(user_arrive, minlength=T)
    new_items = np.bincount(item_birth, minlength=T)
    short = np.flatnonzero(quotas < new_users + new_items)
    if short.size:
        t = int(short[0])
        raise ConfigError(f"synth: period {t} has {quotas[t]} interactions but {new_users[t]} users "
                          f"and {new_items[t]} items first appear in it (each needs a row); ask for "
                          "more interactions or fewer users/items")

    user_order = np.argsort(user_arrive, kind="stable")  # users arriving in t are a contiguous run
    user_start = np.concatenate([[0], np.cumsum(new_users)])
    item_order = np.argsort(item_birth, kind="stable")
    item_start = np.concatenate([[0], np.cumsum(new_items)])
    win_lo, win_hi = _period_windows(s)

    users_out, items_out, times_out = [], [], []
    for t in range(T):
        # Rows of period t: one per arriving user, the rest drawn by activity among present users.
        arriving = user_order[user_start[t]: user_start[t + 1]]
        present = np.flatnonzero((user_arrive <= t) & (user_leave > t))
        n_rest = int(quotas[t] - len(arriving))
        drawn = present[_weighted_choice(np.cumsum(activity[present]), n_rest, rng)]
        users = np.concatenate([arriving, drawn])

        # Topic of each row: the user's current interest, or its session topic of the period.
        alive = np.flatnonzero((item_birth <= t) & (item_death > t))
        weight = popularity[alive] * s.freshness ** (t - item_birth[alive])
        by_topic = np.argsort(item_topic[alive], kind="stable")
        alive, weight = alive[by_topic], weight[by_topic]
        topic_of_alive = item_topic[alive]
        topic_weight = np.bincount(topic_of_alive, weights=weight, minlength=s.topics)
        theta = (omega[users] * (t - user_arrive[users]))[:, None]
        interest = np.cos(theta) * plane_a[users] + np.sin(theta) * plane_b[users]
        logits = s.sharpness * interest @ centroids.T
        if s.topic_swing > 0:
            logits += (s.topic_swing * np.sin(2 * np.pi * t / T + phase)).astype(logits.dtype)
        logits[:, topic_weight <= 0] = -np.inf
        topics = _sample_rows(logits, rng)
        distinct, inverse = np.unique(users, return_inverse=True)
        session = _sample_rows(logits[np.unique(inverse, return_index=True)[1]], rng)[inverse]
        topics = np.where(rng.random(len(users)) < s.session_share, session, topics)

        # Item within the topic, by popularity and freshness (cumulated weights, topic by topic).
        cum = np.cumsum(weight)
        topic_end = np.cumsum(topic_weight)
        topic_lo = topic_end - topic_weight
        target = topic_lo[topics] + rng.random(len(users)) * topic_weight[topics]
        pick = np.searchsorted(cum, target, side="right")
        # Clamp into the topic's own run of items (guards float round-off at the run's ends).
        run_start = np.searchsorted(topic_of_alive, topics, side="left")
        run_end = np.searchsorted(topic_of_alive, topics, side="right") - 1
        items = alive[np.clip(pick, run_start, run_end)]
        # Every item born in t gets a row: it replaces the item of a row drawn by activity.
        born = item_order[item_start[t]: item_start[t + 1]]
        if born.size:
            slots = len(arriving) + rng.choice(n_rest, size=born.size, replace=False)
            items[slots] = born

        # Times: uniform in the period's window; rows of the period in time order.
        times = rng.integers(win_lo[t], win_hi[t], len(users))
        order = np.argsort(times, kind="stable")
        users_out.append(users[order])
        items_out.append(items[order])
        times_out.append(times[order])

    return pd.DataFrame({"user": np.concatenate(users_out).astype(np.int64),
                         "item": np.concatenate(items_out).astype(np.int64),
                         "time": np.concatenate(times_out).astype(np.int64)})


def _sample_rows(logits: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One column per row of ``logits``, drawn from the row's softmax (inverse CDF)."""
    if logits.shape[0] == 0:
        return np.zeros(0, dtype=np.int64)
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    cdf = np.cumsum(shifted, axis=1)
    target = rng.random(len(logits))[:, None] * cdf[:, -1:]
    return np.minimum((cdf <= target).sum(axis=1), logits.shape[1] - 1)


def write_log(frame: pd.DataFrame, path: str | Path) -> Path:
    """Write the log as Parquet (``.parquet``/``.pq``) or CSV (anything else), atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    parquet = path.suffix.lower() in (".parquet", ".pq")
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file the usual permissions
    try:
        if parquet:
            frame.to_parquet(tmp, index=False)
        else:
            frame.to_csv(tmp, index=False)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path
