"""ipsec_nflog.capture.stats, pure Python: every kind of loss is counted apart, summed over
groups, and named in the one-line drop summary."""

from __future__ import annotations

from dataclasses import fields
from types import SimpleNamespace

import pytest

from ipsec_nflog.capture.stats import DROP_FIELDS, CaptureStats, GroupStats

FIELD_NAMES = [f.name for f in fields(GroupStats)]


def test_dropped_packets_are_sequence_gaps_plus_ring_overflow() -> None:
    g = GroupStats(group=5, seq_gap_packets=3, ring_drop_packets=4, enobufs_events=9,
                   socket_drops=8, filtered_packets=100, malformed=2)
    assert DROP_FIELDS == ("seq_gap_packets", "ring_drop_packets")
    assert g.dropped_packets == 7


def test_a_group_without_losses_is_not_lossy() -> None:
    g = GroupStats(group=5, received_packets=10, delivered_packets=10, filtered_packets=4,
                   timestamps_synthesized=10, datagrams=3, max_datagram=900)
    assert g.dropped_packets == 0
    assert g.lossy is False


@pytest.mark.parametrize("counter", ["seq_gap_packets", "ring_drop_packets", "enobufs_events",
                                     "socket_drops", "truncated_datagrams"])
def test_any_loss_counter_alone_makes_a_group_lossy(counter: str) -> None:
    assert GroupStats(group=1, **{counter: 1}).lossy is True


def test_from_mapping_reads_every_field_as_an_int() -> None:
    # the compiled core's struct: an object with one attribute per field (cffi integers)
    source = SimpleNamespace(**{name: i + 1 for i, name in enumerate(FIELD_NAMES)})
    source.received_bytes = True  # int() of anything int-like: bools included
    g = GroupStats.from_mapping(source)
    expected = {name: i + 1 for i, name in enumerate(FIELD_NAMES)} | {"received_bytes": 1}
    assert {name: getattr(g, name) for name in FIELD_NAMES} == expected
    assert all(type(getattr(g, name)) is int for name in FIELD_NAMES)


def test_from_mapping_names_a_missing_field() -> None:
    source = SimpleNamespace(**{name: 0 for name in FIELD_NAMES if name != "ring_drop_packets"})
    with pytest.raises(AttributeError, match="ring_drop_packets"):
        GroupStats.from_mapping(source)


def two_groups() -> CaptureStats:
    return CaptureStats(
        groups={
            5: GroupStats(group=5, received_packets=10, delivered_packets=8, delivered_bytes=800,
                          seq_gap_packets=1, ring_drop_packets=1, enobufs_events=1),
            6: GroupStats(group=6, received_packets=20, delivered_packets=16,
                          delivered_bytes=1600, seq_gap_packets=2, ring_drop_packets=3,
                          socket_drops=2),
        },
        pending_packets=3, pending_bytes=300, ring_size=1 << 20,
    )


def test_capture_totals_sum_the_groups() -> None:
    st = two_groups()
    assert (st.received_packets, st.delivered_packets, st.delivered_bytes) == (30, 24, 2400)
    assert (st.seq_gap_packets, st.ring_drop_packets) == (3, 4)
    assert (st.enobufs_events, st.socket_drops) == (1, 2)
    assert st.dropped == 7
    assert st.lossy is True


def test_drop_summary_names_every_non_zero_counter_in_order() -> None:
    assert two_groups().drop_summary() == (
        "kernel (seq gaps): 3, ENOBUFS overruns: 1, socket drops: 2, ring full: 4")


def test_drop_summary_leaves_out_zero_counters() -> None:
    st = CaptureStats(groups={7: GroupStats(group=7, ring_drop_packets=12)})
    assert st.drop_summary() == "ring full: 12"
    assert st.dropped == 12


@pytest.mark.parametrize("st", [
    CaptureStats(),
    CaptureStats(groups={5: GroupStats(group=5, received_packets=4, delivered_packets=4,
                                       filtered_packets=2)}),
])
def test_no_losses_say_no_drops(st: CaptureStats) -> None:
    assert st.drop_summary() == "no drops"
    assert st.dropped == 0
    assert st.lossy is False


def test_truncated_datagrams_make_a_capture_lossy_without_dropped_packets() -> None:
    st = CaptureStats(groups={5: GroupStats(group=5, truncated_datagrams=1)})
    assert st.dropped == 0
    assert st.lossy is True


def test_as_dict_has_every_group_field_and_the_totals() -> None:
    st = CaptureStats(groups={9: GroupStats(group=9, seq_gap_packets=2, portid=77)},
                      pending_packets=1, pending_bytes=64, ring_size=4096)
    zeros = dict.fromkeys(FIELD_NAMES, 0)
    assert st.as_dict() == {
        "groups": {9: zeros | {"group": 9, "seq_gap_packets": 2, "portid": 77}},
        "pending_packets": 1,
        "pending_bytes": 64,
        "ring_size": 4096,
        "dropped": 2,
    }
