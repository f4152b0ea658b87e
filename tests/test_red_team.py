"""The red-team battery (tests/red_team.py) ends with no raw traceback, nothing silent, nothing lost."""

import pytest


@pytest.mark.slow
def test_red_team_battery_has_no_raw_silent_or_lost_case():
    from .red_team import run_battery

    counts = run_battery()
    assert set(counts) == {"tried", "ok", "skip", "error", "raw", "silent", "lost"}
    assert counts["tried"] >= 50 and sum(v for k, v in counts.items() if k != "tried") == counts["tried"]
    assert counts["raw"] == counts["silent"] == counts["lost"] == 0, counts
