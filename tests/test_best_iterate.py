"""The iterate tracker both rotation fits use: fitted or held-out selection, reported fields."""

import torch

from drlightning.rotation.best_iterate import IterateTracker


def _offer_all(tracker: IterateTracker, fitted: list[float], held: list[float] | None) -> None:
    for step, value in enumerate(fitted):
        q = torch.full((2, 2), float(step))
        tracker.offer(value, q, q + 1, step, None if held is None else held[step])


def test_fitted_selection_keeps_the_lowest_fitted_value_and_a_copy():
    tracker = IterateTracker()
    _offer_all(tracker, [3.0, 2.0, 2.5, 1.0, 1.0], None)
    assert (tracker.initial_loss, tracker.best_step, tracker.best_fitted_loss) == (3.0, 3, 1.0)
    assert torch.equal(tracker.best[0], torch.full((2, 2), 3.0))  # the first of equal values
    assert tracker.report() == {"initial_loss": 3.0, "best_loss": 1.0, "best_step": 3}


def test_held_out_selection_disagrees_with_the_fitted_one():
    tracker = IterateTracker()
    _offer_all(tracker, [3.0, 2.0, 1.0], [5.0, 4.0, 6.0])
    assert tracker.best_step == 1 and tracker.held_curve == [5.0, 4.0, 6.0]
    assert tracker.report() == {"initial_loss": 3.0, "best_loss": 2.0, "best_step": 1,
                                "best_on": "held_out", "held_out_initial_loss": 5.0,
                                "held_out_best_loss": 4.0, "held_out_final_loss": 6.0}


def test_kept_tensors_do_not_follow_later_changes():
    tracker = IterateTracker()
    q = torch.zeros(2, 2)
    tracker.offer(1.0, q, q, 0)
    q += 7
    assert torch.equal(tracker.best[0], torch.zeros(2, 2))
