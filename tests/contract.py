"""The contract every registered strategy must meet: it lives in ``smlrec.testing`` (so a plug-in
author runs the same suite on their class); this module keeps the names the tests import.

``tests/test_strategy_contract.py`` runs the checks for every name in
``smlrec.strategies.STRATEGIES``, so a newly registered strategy is covered without edits. To keep a
slow strategy fast, add an entry to ``smlrec.testing.FAST_OVERRIDES``.
"""

from __future__ import annotations

from smlrec.testing import (CONTRACT_PLAN, CONTRACT_SEED, FAST_OVERRIDES, N_NEGATIVES, ContractWorld,  # noqa: F401
                            assert_same, check_state_round_trip, empty_period, fast_overrides,
                            plain_leaves)

assert_state_round_trip = check_state_round_trip
