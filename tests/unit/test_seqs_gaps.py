"""SeqSet never treats an unseen report as seen: an old gap filled late is folded, not
dropped as a duplicate; only seqs past the probe's replay horizon are settled."""

from __future__ import annotations

from kopeck.accounting.seqs import SeqSet
from kopeck.api.report import REPLAY_HORIZON_REPORTS


def test_late_report_in_old_gap_is_folded() -> None:
    s = SeqSet()
    for seq in range(0, 80, 2):  # 40 reports, a gap after each
        assert s.add(seq)
    assert 1 not in s and 3 not in s
    assert s.add(1) is True  # the late report is new to the record: fold it
    assert 1 in s and 3 not in s
    assert s.fragmented


def test_encoding_keeps_every_gap() -> None:
    s = SeqSet()
    for seq in range(0, 80, 2):
        s.add(seq)
    back = SeqSet.decode(s.encode())
    assert back.ranges == s.ranges and back.floor == -1
    assert all(odd not in back for odd in range(1, 80, 2))


def test_only_seqs_past_the_horizon_are_settled() -> None:
    s = SeqSet(horizon=10)
    for seq in (0, 2, 4, 20):
        s.add(seq)
    # highest 20, horizon 10: seqs <= 10 can no longer arrive, 11..19 still may
    assert s.floor == 10 and s.ranges == [(20, 20)]
    assert 15 not in s and s.add(15)
    assert s.encode() == "..10,15,20"
    back = SeqSet.decode(s.encode(), horizon=10)
    assert back.floor == 10 and back.ranges == [(15, 15), (20, 20)]
    assert 3 in back and 16 not in back


def test_contiguous_prefix_compacts_into_the_floor() -> None:
    s = SeqSet()
    for seq in range(1000):
        s.add(seq)
    assert s.encode() == "0-999" and s.highest == 999
    s.add(1001)
    assert 1000 not in s and s.encode() == "0-999,1001"
    s.settle(500)
    assert s.encode() == "..999,1001" and 1000 not in s


def test_old_encoding_still_reads() -> None:
    s = SeqSet.decode("0-41,43-50")
    assert s.ranges == [(0, 41), (43, 50)] and s.encode() == "0-41,43-50"
    assert 42 not in s and 41 in s and 50 in s and 51 not in s
    assert REPLAY_HORIZON_REPORTS >= 17_280  # the probe's default buffer fits the horizon


def test_allocation_status_round_trip_keeps_gaps() -> None:
    import datetime as dt

    from kopeck.accounting.ledger import Accumulator, WorkloadKey, from_status, status_patch
    from kopeck.accounting.periods import period_at

    t = dt.datetime(2026, 11, 23, 12, tzinfo=dt.UTC)
    period = period_at("Monthly", t)
    acc = Accumulator(WorkloadKey("shop", "Deployment", "web", "apps/v1"), period)
    for seq in range(0, 80, 2):
        acc.mark("n1", "boot", seq, t)
    acc.folded["n1/boot"].settle(9)
    back = from_status(acc.key, period, status_patch(acc))
    assert back.holds("n1", "boot", 5)  # settled: past the replay horizon
    assert not back.holds("n1", "boot", 11) and not back.holds("n1", "boot", 79)
    assert back.holds("n1", "boot", 78)
    assert back.folded["n1/boot"].encode().startswith("..10,12,14")
