"""A camera's learned reference: learning, slow refresh, relearning, storage as bytes."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from tests.cameras.test_checks import (
    CHECKS,
    Frame,
    camera_checks,
    covered,
    passing,
    scene,
    shoot,
    view,
)
from vigie.cameras._checks import measure, picture_reasons, thumbnail
from vigie.cameras._reference import (
    COARSE_SIZE,
    REFRESH_EVERY,
    Reference,
    ReferenceFormatError,
    ReferenceLearner,
    coarse,
    scene_structure,
)
from vigie.config import CameraChecks
from vigie.errors import VigieError

HOUR = 3600.0


class Camera:
    """Drives a learner the way a camera's worker does, one analysed frame at a time."""

    def __init__(self, checks: CameraChecks = CHECKS, **learner: float) -> None:
        self.checks = checks
        self.learner = ReferenceLearner(checks, **learner)  # type: ignore[arg-type]
        self.previous: Frame | None = None

    def frame(self, ts: float, frame: Frame) -> frozenset[str]:
        thumb = thumbnail(frame)
        reference = self.learner.reference
        m = measure(thumb, self.previous, reference)
        reasons = picture_reasons(m, reference, self.checks)
        self.learner.feed(ts, thumb, m, reasons)
        self.previous = thumb
        return reasons

    def run(self, start: float, stop: float, every: float,
            picture: Callable[[float, int], Frame]) -> list[frozenset[str]]:
        """Frames from `start` to `stop` (excluded); `picture(ts, i)` shoots each one."""
        count = round((stop - start) / every)
        return [self.frame(start + i * every, picture(start + i * every, i))
                for i in range(count)]


def clean(ts: float, i: int) -> Frame:
    return shoot(view(), seed=1000 + i)


@pytest.fixture(scope="module")
def learned() -> Camera:
    camera = Camera()
    camera.run(0, 122, 2.0, clean)
    assert camera.learner.reference is not None
    return camera


# --- learning ------------------------------------------------------------------------------


def test_a_reference_needs_learn_for_seconds_of_good_picture() -> None:
    camera = Camera()
    camera.run(0, 120, 2.0, clean)  # frames at 0..118 s: 118 s of good picture
    assert camera.learner.learning and camera.learner.reference is None
    assert camera.learner.learned_for == pytest.approx(118)
    camera.frame(120, clean(120, 60))
    reference = camera.learner.reference
    assert reference is not None and not camera.learner.learning
    assert (reference.learned_at, reference.refreshed_at, reference.samples) == (120, 120, 61)
    assert reference.luma_mean == pytest.approx(float(view().mean()), abs=2)


def test_the_cameras_learn_for_is_honoured() -> None:
    camera = Camera(camera_checks(learn_for="30s"))
    camera.run(0, 30, 2.0, clean)
    assert camera.learner.reference is None
    camera.frame(30, clean(30, 15))
    assert camera.learner.reference is not None


def test_a_reference_needs_enough_frames_too() -> None:
    camera = Camera(camera_checks(learn_for=5))
    camera.run(0, 16, 2.0, clean)  # 8 frames over 14 s: long enough, too few frames
    assert camera.learner.reference is None
    camera.run(16, 20, 2.0, clean)
    assert camera.learner.reference is not None
    assert camera.learner.reference.samples == 10


def test_bad_picture_does_not_count_as_learning_time() -> None:
    camera = Camera()
    camera.run(0, 60, 2.0, clean)
    assert camera.learner.learned_for == pytest.approx(58)
    # A hand over the lens for ten minutes: those frames are skipped, not learned.
    assert set().union(*camera.run(60, 660, 2.0, lambda ts, i: shoot(covered(view()),
                                                                     seed=i))) == {"covered"}
    assert camera.learner.learned_for == pytest.approx(58)
    camera.run(660, 722, 2.0, clean)
    assert camera.learner.reference is None  # 58 + 60 s: the gap does not count
    camera.frame(722, clean(722, 0))
    assert camera.learner.reference is not None


def test_an_outage_does_not_count_as_learning_time() -> None:
    camera = Camera()
    camera.run(0, 60, 2.0, clean)
    camera.run(3600, 3660, 2.0, clean)  # no frames for an hour in between
    assert camera.learner.reference is None
    assert camera.learner.learned_for == pytest.approx(58 + 58)


def test_sparse_keyframes_are_learned_from_too() -> None:
    # A "smart codec" stream: one keyframe every 15 s, nothing analysed in between.
    camera = Camera()
    camera.run(0, 135, 15.0, clean)
    assert camera.learner.reference is None
    camera.frame(135, clean(135, 9))
    assert camera.learner.reference is not None


def test_frozen_frames_are_not_learned() -> None:
    learner = ReferenceLearner(CHECKS)
    thumb = thumbnail(shoot(view(), seed=1))
    m = measure(thumb, thumb, None)
    for i in range(100):
        assert learner.feed(i * 2.0, thumb, m, {"frozen"}) is None
    assert learner.learned_for == 0


def test_repeated_timestamps_add_nothing() -> None:
    learner = ReferenceLearner(camera_checks(learn_for=10))
    thumb = thumbnail(shoot(view(), seed=1))
    m = measure(thumb, None, None)
    for _ in range(50):
        learner.feed(5.0, thumb, m)
    assert learner.reference is None and learner.learned_for == 0


def test_a_view_that_changes_while_learning_starts_learning_again() -> None:
    camera = Camera()
    camera.run(0, 100, 2.0, clean)
    # The installer turns the camera at t=100 s: learn the new view, not a blend.
    turned: Callable[[float, int], Frame] = lambda ts, i: shoot(view(dx=0.25), seed=i)  # noqa: E731
    camera.run(100, 200, 2.0, turned)
    assert camera.learner.reference is None
    camera.run(200, 222, 2.0, turned)
    reference = camera.learner.reference
    assert reference is not None and reference.learned_at == 220
    assert camera.frame(222, shoot(view(dx=0.25), seed=1)) == frozenset()
    assert camera.frame(224, shoot(view(), seed=1)) == {"moved"}


def test_a_ptz_with_moved_disabled_still_learns_its_sharpness() -> None:
    camera = Camera(camera_checks(disabled=["moved"]))
    tour: Callable[[float, int], Frame] = (  # noqa: E731
        lambda ts, i: shoot(view(dx=0.3 * ((i // 10) % 3 - 1)), seed=i))
    camera.run(0, 122, 2.0, tour)
    assert camera.learner.reference is not None
    assert camera.frame(122, shoot(view(dx=0.3), blur=2.0)) == {"blurred"}


def test_learning_ignores_objects_passing_by() -> None:
    camera = Camera()
    walker: Callable[[float, int], Frame] = (  # noqa: E731
        lambda ts, i: shoot(passing(view(), x=(i % 20) / 19), seed=i))
    camera.run(0, 122, 2.0, walker)
    assert camera.learner.reference is not None
    for seed in range(3):
        assert camera.frame(200 + seed, shoot(view(), seed=seed)) == frozenset()


# --- relearning ----------------------------------------------------------------------------


def test_relearn_after_a_planned_change_of_view() -> None:
    camera = Camera()
    camera.run(0, 122, 2.0, clean)
    moved: Callable[[float, int], Frame] = lambda ts, i: shoot(view(dx=0.2), seed=i)  # noqa: E731
    assert set().union(*camera.run(122, 300, 2.0, moved)) == {"moved"}
    camera.learner.relearn()  # the technician confirms the new view
    assert camera.learner.learning and camera.learner.reference is None
    assert camera.learner.learned_for == 0
    during = camera.run(300, 422, 2.0, moved)
    assert set().union(*during) == set()  # nothing to compare with while learning
    reference = camera.learner.reference
    assert reference is not None and reference.learned_at == 420
    assert camera.frame(422, shoot(view(dx=0.2), seed=5)) == frozenset()


def test_relearn_while_learning_starts_from_zero() -> None:
    camera = Camera()
    camera.run(0, 100, 2.0, clean)
    camera.learner.relearn()
    camera.run(100, 200, 2.0, clean)
    assert camera.learner.reference is None


# --- refresh -------------------------------------------------------------------------------


def test_a_slow_change_of_scene_is_absorbed() -> None:
    # Over two days the view turns into another one (works, seasons, a new building): each
    # minute differs imperceptibly from the last, and no minute is reported.
    camera = Camera()
    camera.run(0, 122, 2.0, clean)
    reference = camera.learner.reference
    assert reference is not None
    before, after = view(), scene(seed=77)
    days = 48 * HOUR

    def morph(ts: float, i: int) -> Frame:
        w = min(1.0, max(0.0, (ts - 122) / days))
        return shoot((1 - w) * before + w * after, seed=i)

    verdicts = camera.run(122, 122 + days + 12 * HOUR, 300.0, morph)
    assert set().union(*verdicts) == set()
    refreshed = camera.learner.reference
    assert refreshed is not None and refreshed is not reference
    assert refreshed.learned_at == reference.learned_at
    assert refreshed.refreshed_at > reference.refreshed_at + days
    # Without the refresh the same end picture would be "moved".
    end = thumbnail(shoot(after, seed=1))
    stale = picture_reasons(measure(end, None, reference), reference, CHECKS)
    assert stale == {"moved"}


def test_slow_lighting_drift_raises_nothing() -> None:
    camera = Camera()
    camera.run(0, 122, 2.0, clean)
    gains = np.concatenate([np.linspace(1.0, 0.6, 100), np.linspace(0.6, 1.3, 200)])
    verdicts = camera.run(122, 122 + 120.0 * gains.size, 120.0,
                          lambda ts, i: shoot(view(), gain=float(gains[i]), seed=i))
    assert set().union(*verdicts) == set()


def test_a_sudden_displacement_is_never_absorbed(learned: Camera) -> None:
    camera = Camera()
    camera.learner = ReferenceLearner(CHECKS, learned.learner.reference)
    reference = camera.learner.reference
    verdicts = camera.run(200, 200 + 24 * HOUR, 300.0,
                          lambda ts, i: shoot(view(dx=0.2), seed=i))
    assert all(v == {"moved"} for v in verdicts)
    assert camera.learner.reference is reference  # untouched


def test_refresh_refuses_a_displaced_picture_even_if_told_it_is_good(learned: Camera) -> None:
    reference = learned.learner.reference
    assert reference is not None
    learner = ReferenceLearner(CHECKS, reference)
    thumb = thumbnail(shoot(view(dx=0.2), seed=1))
    m = measure(thumb, None, reference)
    for hour in range(1, 100):
        learner.refresh(reference.refreshed_at + hour * HOUR, thumb, m)
    assert learner.reference is reference


def test_refresh_is_slow_and_spaced() -> None:
    camera = Camera()
    camera.run(0, 122, 2.0, clean)
    first = camera.learner.reference
    assert first is not None
    camera.run(122, 122 + REFRESH_EVERY - 2, 2.0, clean)
    assert camera.learner.reference is first  # not a new reference every frame
    camera.run(122 + REFRESH_EVERY - 2, 122 + 3 * REFRESH_EVERY, 2.0, clean)
    second = camera.learner.reference
    assert second is not None and second is not first
    assert second.refreshed_at - first.refreshed_at >= REFRESH_EVERY
    # One minute against a time constant of hours: the structure barely moves.
    delta = np.abs(second.structure - first.structure).max()
    assert 0 < delta < 0.05


def test_a_long_outage_does_not_give_the_next_frame_a_big_weight(learned: Camera) -> None:
    reference = learned.learner.reference
    assert reference is not None
    learner = ReferenceLearner(CHECKS, reference)
    thumb = thumbnail(shoot(passing(view(), x=0.5, share=0.2), seed=3))  # someone in front
    m = measure(thumb, None, reference)
    assert picture_reasons(m, reference, CHECKS) == frozenset()
    learner.refresh(reference.refreshed_at + 30 * 24 * HOUR, thumb, m)  # back after a month
    refreshed = learner.reference
    assert refreshed is not None and refreshed is not reference
    assert refreshed.similarity(reference.structure) > 0.999


def test_sharpness_is_not_refreshed_so_a_slowly_fogging_lens_is_reported() -> None:
    camera = Camera()
    camera.run(0, 122, 2.0, clean)
    days = 14 * 24 * HOUR
    verdicts = camera.run(122, 122 + days, 3600.0,
                          lambda ts, i: shoot(view(), blur=3.0 * ts / days, seed=i))
    assert verdicts[0] == frozenset()
    assert verdicts[-1] == {"blurred"}


# --- storage -------------------------------------------------------------------------------


def test_a_reference_round_trips_through_bytes(learned: Camera) -> None:
    reference = learned.learner.reference
    assert reference is not None
    data = reference.to_bytes()
    assert isinstance(data, bytes) and len(data) < 16_000
    back = Reference.from_bytes(data)
    for f in dataclasses.fields(Reference):
        if f.name == "structure":
            assert np.array_equal(back.structure, reference.structure)
        elif f.init:
            assert getattr(back, f.name) == getattr(reference, f.name), f.name
    assert back.to_bytes() == data
    thumb = thumbnail(shoot(view(dx=0.1), seed=4))
    structure = scene_structure(coarse(thumb))
    assert back.similarity(structure) == reference.similarity(structure)


def test_a_stored_reference_carries_on_in_a_new_learner(learned: Camera) -> None:
    reference = learned.learner.reference
    assert reference is not None
    camera = Camera()
    camera.learner = ReferenceLearner(CHECKS, Reference.from_bytes(reference.to_bytes()))
    assert not camera.learner.learning
    assert camera.frame(500, shoot(view(), seed=1)) == frozenset()
    assert camera.frame(502, shoot(view(dx=0.2), seed=1)) == {"moved"}


@pytest.mark.parametrize(("mangle", "message"), [
    (lambda b: b[:10], "too short"),
    (lambda b: b[:-2], "bytes, expected"),
    (lambda b: b + b"\0", "bytes, expected"),
    (lambda b: b"PNG!" + b[4:], "not a vigie camera reference"),
    (lambda b: b[:4] + (99).to_bytes(2, "little") + b[6:], "format 99"),
    (lambda b: b[:6] + (160).to_bytes(2, "little") + b[8:], "at 160x45"),
    (lambda b: b[:-2] + np.float16(np.nan).tobytes(), "non-finite"),
    (lambda b: b[:10] + np.float64(-1.0).tobytes() + b[18:], "sharpness"),
])
def test_unreadable_bytes_are_refused(learned: Camera, mangle: Callable[[bytes], bytes],
                                      message: str) -> None:
    reference = learned.learner.reference
    assert reference is not None
    with pytest.raises(ReferenceFormatError, match=message) as caught:
        Reference.from_bytes(mangle(reference.to_bytes()))
    assert isinstance(caught.value, VigieError) and isinstance(caught.value, ValueError)


def test_a_reference_is_immutable(learned: Camera) -> None:
    reference = learned.learner.reference
    assert reference is not None
    with pytest.raises(dataclasses.FrozenInstanceError):
        reference.sharpness = 1.0  # type: ignore[misc]
    with pytest.raises(ValueError, match="read-only"):
        reference.structure[0, 0, 0] = 1.0


def test_a_reference_checks_what_it_is_built_from() -> None:
    with pytest.raises(ValueError, match="shape"):
        Reference(sharpness=1.0, structure=np.zeros((2, 10, 10), np.float32),
                  learned_at=0, refreshed_at=0)
    with pytest.raises(ValueError, match="sharpness"):
        Reference(sharpness=math.nan, structure=np.zeros((2, 45, 80), np.float32),
                  learned_at=0, refreshed_at=0)


STRUCTURE_SHAPE = (2, COARSE_SIZE[1], COARSE_SIZE[0])
finite = st.floats(-1e6, 1e6, allow_nan=False, width=64)


@settings(max_examples=50, deadline=None)
@given(structure=hnp.arrays(np.float32, STRUCTURE_SHAPE,
                            elements=st.floats(-4, 4, width=32)),
       sharpness=st.floats(0, 1e6), luma=st.floats(0, 255), learned=finite, refreshed=finite,
       samples=st.integers(0, 2**32 - 1))
def test_any_reference_round_trips(structure: np.ndarray, sharpness: float, luma: float,
                                   learned: float, refreshed: float, samples: int) -> None:
    reference = Reference(sharpness=sharpness, structure=structure, learned_at=learned,
                          refreshed_at=refreshed, luma_mean=luma, samples=samples)
    back = Reference.from_bytes(reference.to_bytes())
    assert np.array_equal(back.structure, reference.structure)
    assert (back.sharpness, back.luma_mean, back.learned_at, back.refreshed_at,
            back.samples) == (sharpness, luma, learned, refreshed, samples)
    similarity = back.similarity(reference.structure)
    assert 0.0 <= similarity <= 1.0
    if np.abs(structure).max() > 0.01:
        assert similarity == pytest.approx(1.0, abs=1e-5)
