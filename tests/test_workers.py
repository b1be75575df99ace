"""How the sender processes share a campaign: id ranges dealt as they ask."""

from __future__ import annotations

import queue
import threading

from pushcli.workers import Control, Dealer, RangesFromParent


def _deal_all(dealer: Dealer) -> list[tuple[int, int | None]]:
    dealt = []
    while (r := dealer.take()) is not None:
        dealt.append(r)
    return dealt


def test_dealer_covers_the_id_space_once_in_shrinking_ranges() -> None:
    dealt = _deal_all(Dealer(1, 100_000, senders=2, pending=100_000, smallest=250))
    assert dealt[0] == (0, 12_500)  # an eighth of what is left: two senders, four times over
    assert all(a[1] == b[0] for a, b in zip(dealt, dealt[1:], strict=False))  # contiguous
    # the last range is open: subscribers imported while the campaign is sent are sent too
    assert dealt[-1] == (100_000, None)
    sizes = [hi - lo for lo, hi in dealt[:-1] if hi is not None]
    assert sizes == sorted(sizes, reverse=True)
    assert min(sizes[:-1]) == 250  # the tail is dealt in small ranges: senders end together
    assert len(dealt) < 60


def test_dealer_scales_the_smallest_range_to_a_sparse_audience() -> None:
    # 1,000 pending among 100,000 ids: a range of 250 ids would hold about 2 of them
    dealt = _deal_all(Dealer(1, 100_000, senders=2, pending=1_000, smallest=250))
    assert min(hi - lo for lo, hi in dealt[:-2] if hi is not None) == 25_000
    assert dealt[-2][1] == 100_000 and dealt[-1] == (100_000, None)


def test_dealer_deals_nothing_after_close_or_in_an_empty_store() -> None:
    dealer = Dealer(1, 10_000, senders=2, pending=10_000)
    assert dealer.take() is not None
    dealer.close()
    assert dealer.take() is None
    # an empty store: the (empty) id span, then the open end for what is imported meanwhile
    assert _deal_all(Dealer(0, 0, senders=2, pending=0)) == [(-1, 0), (0, None)]


def test_dealer_never_deals_an_id_twice_to_concurrent_takers() -> None:
    dealer = Dealer(1, 50_000, senders=4, pending=50_000, smallest=10)
    got: list[list[tuple[int, int | None]]] = [[] for _ in range(4)]

    def take(mine: list[tuple[int, int | None]]) -> None:
        while (r := dealer.take()) is not None:
            mine.append(r)

    threads = [threading.Thread(target=take, args=(g,)) for g in got]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ids = sorted(i for g in got for lo, hi in g for i in range(lo + 1, (hi or 50_003) + 1))
    assert ids == list(range(1, 50_004))  # the open end, once, to one taker


def test_a_child_asks_one_range_ahead_and_stops_at_the_parents_none() -> None:
    answers: queue.SimpleQueue[tuple[int, int | None] | None] = queue.SimpleQueue()
    asked: list[int] = []
    ranges = RangesFromParent((0, 10), lambda: asked.append(1), answers, Control())
    assert ranges() == (0, 10) and len(asked) == 1  # the first came with its share
    answers.put((10, 20))
    assert ranges() == (10, 20) and len(asked) == 2
    answers.put(None)  # the parent has nothing left
    assert ranges() is None and len(asked) == 2
    assert ranges() is None and len(asked) == 2


def test_a_child_dealt_nothing_with_its_share_sends_nothing() -> None:
    """The parent had dealt every id before this child's turn: None, not "everything"."""
    asked: list[int] = []
    answers: queue.SimpleQueue[tuple[int, int | None] | None] = queue.SimpleQueue()
    ranges = RangesFromParent(None, lambda: asked.append(1), answers, Control())
    assert ranges() is None and not asked


def test_a_child_waiting_for_a_range_gives_up_on_a_stop() -> None:
    control = Control()
    answers: queue.SimpleQueue[tuple[int, int | None] | None] = queue.SimpleQueue()
    ranges = RangesFromParent((0, 10), lambda: None, answers, control)
    assert ranges() == (0, 10)
    control.press()  # no answer will come: the parent stopped dealing
    assert ranges() is None


def test_a_child_whose_parent_is_gone_keeps_only_the_range_it_holds() -> None:
    def gone() -> None:
        raise BrokenPipeError

    answers: queue.SimpleQueue[tuple[int, int | None] | None] = queue.SimpleQueue()
    ranges = RangesFromParent((0, 10), gone, answers, Control())
    assert ranges() == (0, 10)
    assert ranges() is None
