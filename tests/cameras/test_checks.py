"""Picture checks on synthetic scenes (numpy/OpenCV) and on frames decoded from H.264 clips.

The synthetic scene is drawn in coordinates relative to the picture, so the same scene can
be shot at any resolution, moved, turned, lit, blurred, covered or frozen.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import av
import cv2
import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vigie.cameras._checks import (
    FROZEN_CHANGE,
    PICTURE_REASONS,
    THUMB_SIZE,
    FreezeDetector,
    Measures,
    measure,
    picture_reasons,
    thumbnail,
)
from vigie.cameras._reference import Reference, ReferenceLearner
from vigie.config import CameraChecks, parse_config

Image = npt.NDArray[np.float32]
Frame = npt.NDArray[np.uint8]

W, H = 640, 360
CHECKS = CameraChecks()


# --- synthetic scenes -----------------------------------------------------------------


def scene(width: int = W, height: int = H, seed: int = 5) -> Image:
    """A textured view: uneven light, 60 blocks, discs and bars, fine texture."""
    rng = np.random.default_rng(seed)
    light = rng.normal(120, 35, (6, 10)).astype(np.float32)
    img = cv2.resize(light, (width, height), interpolation=cv2.INTER_CUBIC)
    s = width / 640
    for _ in range(60):
        kind, grey = int(rng.integers(0, 3)), float(rng.integers(0, 256))
        x, y = rng.uniform(0, width), rng.uniform(0, height)
        a, b = rng.uniform(10, 80) * s, rng.uniform(10, 60) * s
        if kind == 0:
            cv2.rectangle(img, (int(x), int(y)), (int(x + a), int(y + b)), grey, -1)
        elif kind == 1:
            cv2.circle(img, (int(x), int(y)), int(a / 2), grey, -1)
        else:
            cv2.line(img, (int(x), int(y)), (int(x + 2 * a), int(y - b)), grey, max(1, int(3 * s)))
    texture = rng.normal(0, 18, (180, 320)).astype(np.float32)
    img += cv2.resize(texture, (width, height), interpolation=cv2.INTER_LINEAR)
    return np.clip(img, 0, 255)


WORLD = scene(int(W * 1.6), int(H * 1.6), seed=5)  # what the camera could be aimed at


def view(dx: float = 0.0, dy: float = 0.0, angle: float = 0.0, zoom: float = 1.0,
         width: int = W, height: int = H) -> Image:
    """The camera's view of WORLD, panned by dx/dy (share of the view), turned, zoomed."""
    bh, bw = WORLD.shape
    m = cv2.getRotationMatrix2D((bw / 2, bh / 2), angle, zoom)
    m[0, 2] -= dx * W
    m[1, 2] -= dy * H
    world = cv2.warpAffine(WORLD, m, (bw, bh), flags=cv2.INTER_LINEAR,
                           borderMode=cv2.BORDER_REFLECT)
    y0, x0 = (bh - H) // 2, (bw - W) // 2
    crop = world[y0:y0 + H, x0:x0 + W]
    if (width, height) != (W, H):
        crop = cv2.resize(crop, (width, height), interpolation=cv2.INTER_CUBIC)
    return np.ascontiguousarray(crop)


def shoot(img: Image, *, gain: float = 1.0, offset: float = 0.0, noise: float = 2.0,
          blur: float = 0.0, seed: int | None = None) -> Frame:
    """Photograph a scene: exposure, defocus (Gaussian σ in pixels), sensor noise."""
    rng = np.random.default_rng(seed)
    out = img * np.float32(gain) + np.float32(offset + 0.5)
    if blur:
        out = cv2.GaussianBlur(out, (0, 0), blur)
    out += rng.standard_normal(out.shape, dtype=np.float32) * np.float32(noise)
    return np.clip(out, 0, 255).astype(np.uint8)


def covered(img: Image, share: float = 0.85, grey: float = 90.0) -> Image:
    """A flat patch (hand, tape) over the left `share` of the view, with a light falloff."""
    out = img.copy()
    edge = int(img.shape[1] * share)
    falloff = np.linspace(0, 30, img.shape[1], dtype=np.float32)[:edge]
    out[:, :edge] = grey + falloff
    return out


def passing(img: Image, x: float, share: float = 0.1, seed: int = 9) -> Image:
    """A textured object covering `share` of the view, its left edge at x (0..1)."""
    out = img.copy()
    h, w = img.shape
    ow = int(np.sqrt(share * w * h * 16 / 9))
    oh = int(share * w * h / ow)
    left, top = int(x * (w - ow)), (h - oh) // 2
    out[top:top + oh, left:left + ow] = scene(ow, oh, seed=seed)
    return out


def learn(frames: Iterator[Frame] | list[Frame], checks: CameraChecks = CHECKS,
          every: float = 2.0) -> Reference:
    learner = ReferenceLearner(checks)
    previous = None
    for i, frame in enumerate(frames):
        thumb = thumbnail(frame)
        m = measure(thumb, previous, learner.reference)
        learner.feed(i * every, thumb, m, picture_reasons(m, learner.reference, checks))
        previous = thumb
        if learner.reference is not None:
            return learner.reference
    raise AssertionError("no reference learned")


@pytest.fixture(scope="module")
def reference() -> Reference:
    return learn(shoot(view(), seed=100 + i) for i in range(200))


def check(frame: Frame, reference: Reference | None,
          checks: CameraChecks = CHECKS) -> frozenset[str]:
    thumb = thumbnail(frame)
    return picture_reasons(measure(thumb, None, reference), reference, checks)


def camera_checks(**overrides: object) -> CameraChecks:
    """A camera's thresholds as the configuration builds them: defaults + its overrides."""
    config = parse_config({"sites": [{
        "id": "clg-test", "name": "Collège", "uai": "0781234A",
        "cameras": [{"id": "cour", "url": "rtsp://10.0.0.1/s", "checks": overrides}],
    }]})
    site = config.sites[0]
    return config.camera_checks(site.cameras[0])


# --- thumbnail --------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(360, 640), (720, 1280), (1080, 1920), (2160, 3840),
                                   (576, 704), (1081, 1921), (240, 320), (180, 320)])
def test_thumbnail_has_the_analysis_size_whatever_the_input(shape: tuple[int, int]) -> None:
    gray = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    thumb = thumbnail(gray)
    assert thumb.shape == (THUMB_SIZE[1], THUMB_SIZE[0])
    assert thumb.dtype == np.uint8
    assert abs(float(thumb.mean()) - float(gray.mean())) < 1.0


def test_thumbnail_owns_its_pixels() -> None:
    gray = np.full((180, 320), 7, np.uint8)
    thumb = thumbnail(gray)
    gray[:] = 200  # the decoder reuses its buffer
    assert int(thumb.max()) == 7


def test_thumbnail_takes_a_decoders_padded_luma_plane() -> None:
    # PyAV's Y plane has rows padded to its line size: a strided view, not a copy.
    frame = shoot(view(), seed=1)
    padded = np.zeros((H, W + 64), np.uint8)
    padded[:, :W] = frame
    assert np.array_equal(thumbnail(padded[:, :W]), thumbnail(frame.copy()))


@pytest.mark.parametrize("bad", [np.zeros((360, 640, 3), np.uint8),
                                 np.zeros((360, 640), np.float32),
                                 np.zeros((360, 640), np.uint16)])
def test_thumbnail_refuses_anything_but_an_8_bit_luma_plane(bad: np.ndarray) -> None:
    with pytest.raises(ValueError, match="luma"):
        thumbnail(bad)


def test_measure_refuses_a_frame_that_is_not_a_thumbnail() -> None:
    with pytest.raises(ValueError, match="thumbnail"):
        measure(shoot(view()), None, None)


def test_a_scene_measures_alike_at_any_stream_resolution(reference: Reference) -> None:
    # The reference was learned on 640×360; the same view in 1080p must still match it.
    small = measure(thumbnail(shoot(view(), seed=1)), None, reference)
    large = measure(thumbnail(shoot(view(width=1920, height=1080), seed=1)), None, reference)
    assert abs(small.luma_mean - large.luma_mean) < 2
    assert 0.6 < large.sharpness / small.sharpness < 1.6
    assert large.similarity is not None and large.similarity > 0.8
    assert check(shoot(view(width=1920, height=1080), seed=1), reference) == frozenset()


# --- each fault, and only it --------------------------------------------------------------


def test_the_clean_scene_raises_nothing(reference: Reference) -> None:
    for seed in range(5):
        assert check(shoot(view(), seed=seed), reference) == frozenset()
    assert check(shoot(view(), seed=1), None) == frozenset()


@pytest.mark.parametrize(("name", "frame", "expected"), [
    ("black", lambda: shoot(view() * 0, noise=3), {"black"}),
    ("no signal", lambda: np.zeros((H, W), np.uint8), {"black"}),
    ("too dark", lambda: shoot(view(), gain=0.2), {"too_dark"}),
    ("too bright", lambda: shoot(view(), gain=0.3, offset=200), {"too_bright"}),
    ("defocused", lambda: shoot(view(), blur=2.0), {"blurred"}),
    ("fogged", lambda: shoot(view(), gain=0.4, offset=110, blur=2.0), {"blurred"}),
    ("covered 85 %", lambda: shoot(covered(view())), {"covered"}),
    ("covered at night", lambda: shoot(covered(view(), grey=25) * 1.5, noise=8), {"covered"}),
    ("panned 20 %", lambda: shoot(view(dx=0.2)), {"moved"}),
    ("panned 15 %", lambda: shoot(view(dx=-0.15)), {"moved"}),
    ("tilted 15 %", lambda: shoot(view(dy=0.15)), {"moved"}),
    ("turned 15°", lambda: shoot(view(angle=15)), {"moved"}),
    ("zoomed 20 %", lambda: shoot(view(zoom=1.25)), {"moved"}),
    ("aimed elsewhere", lambda: shoot(scene(seed=77)), {"moved"}),
])
def test_each_fault_is_reported_alone(reference: Reference, name: str, frame: object,
                                      expected: set[str]) -> None:
    assert callable(frame)
    assert check(frame(), reference) == expected, name


@pytest.mark.parametrize("gain", np.linspace(0.6, 1.3, 15).tolist())
def test_lighting_from_dim_to_bright_raises_nothing(reference: Reference, gain: float) -> None:
    assert check(shoot(view(), gain=gain, seed=3), reference) == frozenset()


def test_uneven_light_raises_nothing(reference: Reference) -> None:
    # Sun on one side, shade on the other (the reference was learned in even light).
    light = np.linspace(0.55, 1.25, W, dtype=np.float32)[None, :]
    assert check(shoot(view() * light, seed=3), reference) == frozenset()


def test_a_dim_noisy_night_raises_nothing(reference: Reference) -> None:
    night = shoot(view(), gain=0.45, noise=6, seed=3)
    assert check(night, reference) == frozenset()


@pytest.mark.parametrize("x", [0.0, 0.25, 0.5, 0.75, 1.0])
def test_an_object_passing_in_front_raises_nothing(reference: Reference, x: float) -> None:
    assert check(shoot(passing(view(), x), seed=3), reference) == frozenset()


def test_a_slight_sway_of_the_mast_is_not_a_move(reference: Reference) -> None:
    assert check(shoot(view(dx=0.015, dy=0.01, angle=1), seed=3), reference) == frozenset()


def test_a_dark_scene_with_lights_is_too_dark_not_black() -> None:
    night = view() * 0.02
    for x in (100, 300, 500):
        cv2.circle(night, (x, 80), 12, 255.0, -1)  # street lamps
    m = measure(thumbnail(shoot(night)), None, None)
    assert m.luma_mean < CHECKS.black_below
    assert check(shoot(night), None) == {"too_dark"}  # unlit is not covered either


def test_a_white_out_is_too_bright_and_uniform_but_never_blurred_or_moved(
        reference: Reference) -> None:
    # A flashlight in the lens: too bright, and uniform, which is what a sticker looks like.
    assert check(shoot(view() * 0 + 250, noise=1), reference) == {"too_bright", "covered"}


# --- what needs a reference, what takes precedence ----------------------------------------


def test_blurred_and_moved_need_a_reference() -> None:
    assert check(shoot(view(), blur=3.0), None) == frozenset()
    assert check(shoot(view(dx=0.2)), None) == frozenset()
    m = measure(thumbnail(shoot(view())), None, None)
    assert m.similarity is None


def test_black_is_neither_covered_nor_blurred_nor_moved(reference: Reference) -> None:
    m = measure(thumbnail(shoot(view() * 0, noise=3)), None, reference)
    assert m.luma_std < 1 and m.sharpness > CHECKS.blur_ratio * reference.sharpness
    assert m.similarity is not None and m.similarity < CHECKS.moved_below
    assert picture_reasons(m, reference, CHECKS) == {"black"}
    assert picture_reasons(m, reference, camera_checks(covered_fraction=0.01)) == {"black"}
    # Flat, but just too bright to be black: then it is covered (a hand at night).
    m = measure(thumbnail(shoot(view() * 0 + 14, noise=1)), None, reference)
    assert picture_reasons(m, reference, CHECKS) == {"too_dark", "covered"}


def test_covered_is_not_also_moved_or_blurred(reference: Reference) -> None:
    m = measure(thumbnail(shoot(covered(view(), share=0.95), blur=3)), None, reference)
    assert m.similarity is not None and m.similarity < CHECKS.moved_below
    assert picture_reasons(m, reference, CHECKS) == {"covered"}
    assert picture_reasons(m, reference, camera_checks(blur_ratio=0.99)) == {"covered"}


def test_too_dark_is_not_also_moved(reference: Reference) -> None:
    m = measure(thumbnail(shoot(view(dx=0.2), gain=0.2)), None, reference)
    assert m.similarity is not None and m.similarity < CHECKS.moved_below
    assert picture_reasons(m, reference, CHECKS) == {"too_dark"}


def test_reasons_are_always_among_the_picture_reasons(reference: Reference) -> None:
    for frame in (shoot(view() * 0), shoot(covered(view())), shoot(view(dx=0.3), blur=4)):
        assert check(frame, reference) <= PICTURE_REASONS


# --- disabled checks and per-camera thresholds --------------------------------------------


@pytest.mark.parametrize(("frame", "reason"), [
    (lambda: shoot(view() * 0), "black"),
    (lambda: shoot(view(), gain=0.2), "too_dark"),
    (lambda: shoot(view(), gain=0.3, offset=200), "too_bright"),
    (lambda: shoot(view(), blur=2.0), "blurred"),
    (lambda: shoot(covered(view())), "covered"),
    (lambda: shoot(view(dx=0.2)), "moved"),
])
def test_a_disabled_check_is_never_reported(reference: Reference, frame: object,
                                            reason: str) -> None:
    assert callable(frame)
    image = frame()
    assert reason in check(image, reference)
    assert check(image, reference, camera_checks(disabled=[reason])) == frozenset()


def test_a_disabled_check_does_not_hand_its_fault_to_another(reference: Reference) -> None:
    # A PTZ with "moved" disabled, or a camera whose "black" is expected at night.
    no_black = camera_checks(disabled=["black"])
    assert check(shoot(view() * 0), reference, no_black) == frozenset()
    no_covered = camera_checks(disabled=["covered"])
    assert check(shoot(covered(view(), share=0.95)), reference, no_covered) == frozenset()


def test_per_camera_thresholds_change_the_outcome(reference: Reference) -> None:
    dim = shoot(view(), gain=0.35, seed=3)  # mean luma about 42
    assert check(dim, reference) == frozenset()
    assert check(dim, reference, camera_checks(dark_below=60)) == {"too_dark"}

    bright = shoot(view(), gain=0.5, offset=120, seed=3)  # mean luma about 180
    assert check(bright, reference) == frozenset()
    assert check(bright, reference, camera_checks(bright_above=170)) == {"too_bright"}

    half_covered = shoot(covered(view(), share=0.7), seed=3)
    assert check(half_covered, reference) == frozenset()
    assert check(half_covered, reference, camera_checks(covered_fraction=0.6)) == {"covered"}
    # Not covered enough for this camera, but what is left of the view does not match.
    assert check(shoot(covered(view())), reference, camera_checks(covered_fraction=0.95)) \
        == {"moved"}

    soft = shoot(view(), blur=1.0, seed=3)
    assert check(soft, reference) == frozenset()
    assert check(soft, reference, camera_checks(blur_ratio=0.8)) == {"blurred"}

    panned = shoot(view(dx=0.2), seed=3)
    assert check(panned, reference, camera_checks(moved_below=0.02)) == frozenset()
    nudged = shoot(view(dx=0.04), seed=3)
    assert check(nudged, reference) == frozenset()
    assert check(nudged, reference, camera_checks(moved_below=0.9)) == {"moved"}

    black = shoot(view() * 0 + 14, noise=1)
    assert check(black, reference) == {"too_dark", "covered"}
    assert check(black, reference, camera_checks(black_below=20)) == {"black"}


# --- change and freeze -------------------------------------------------------------------


def test_change_is_zero_for_identical_frames_and_none_without_previous() -> None:
    thumb = thumbnail(shoot(view(), seed=1))
    assert measure(thumb, None, None).change is None
    assert measure(thumb, thumb.copy(), None).change == 0.0


def test_sensor_noise_of_a_quiet_static_scene_is_a_change() -> None:
    # A quiet night: noise σ 1 grey level, still above the threshold at 640×360 and 1080p.
    for width, height in ((W, H), (1920, 1080)):
        still = view(width=width, height=height) * 0.4
        a, b = (thumbnail(shoot(still, noise=1.0, seed=s)) for s in (1, 2))
        change = measure(a, b, None).change
        assert change is not None and change > 2 * FROZEN_CHANGE, (width, change)


def test_a_ticking_clock_over_a_frozen_picture_is_not_a_change() -> None:
    frozen = shoot(view(), seed=1)
    ticking = frozen.copy()
    cv2.putText(ticking, "2026-11-28 12:00:07", (8, 24), cv2.FONT_HERSHEY_SIMPLEX, 0.7, 255, 2)
    change = measure(thumbnail(ticking), thumbnail(frozen), None).change
    assert change is not None and change < FROZEN_CHANGE


def changes(frames: list[Frame]) -> list[float | None]:
    thumbs = [thumbnail(f) for f in frames]
    return [measure(t, p, None).change for t, p in zip(thumbs, [None, *thumbs[:-1]], strict=True)]


def run(detector: FreezeDetector, deltas: list[float | None], every: float = 2.0) -> list[bool]:
    return [detector.update(i * every, d) for i, d in enumerate(deltas)]


def test_identical_frames_are_frozen_after_frozen_after_seconds() -> None:
    frame = shoot(view(), seed=1)
    verdicts = run(FreezeDetector(CHECKS), changes([frame] * 10))
    # Still since t=0; frozen_after is 10 s: frozen from the frame at t=10 s.
    assert verdicts == [False] * 5 + [True] * 5


def test_a_static_noisy_scene_is_never_frozen() -> None:
    frames = [shoot(view() * 0.5, noise=1.5, seed=s) for s in range(30)]
    assert not any(run(FreezeDetector(CHECKS), changes(frames)))


def test_a_change_restarts_the_freeze_timer() -> None:
    detector = FreezeDetector(CHECKS)
    still = [0.0] * 5
    verdicts = run(detector, [None, *still, 3.0, *still, 0.0])
    assert verdicts[:6] == [False] * 5 + [True]
    assert verdicts[6:11] == [False] * 5  # changed at t=12: frozen again at t=22
    assert verdicts[11:] == [True, True]
    assert detector.still_since == 12.0


def test_a_reconnection_restarts_the_freeze_timer() -> None:
    detector = FreezeDetector(CHECKS)
    assert run(detector, [None, 0.0, 0.0, 0.0, 0.0, 0.0])[-1] is True
    assert detector.update(12.0, None) is False
    assert detector.still_since is None
    detector.reset()
    assert detector.frozen is False


def test_freeze_timing_follows_the_cameras_frozen_after() -> None:
    deltas: list[float | None] = [None, *[0.0] * 15]
    assert run(FreezeDetector(camera_checks(frozen_after="30s")), deltas).index(True) == 15
    assert run(FreezeDetector(camera_checks(frozen_after=3)), deltas).index(True) == 2
    assert not any(run(FreezeDetector(camera_checks(disabled=["frozen"])), deltas))


def test_one_repeat_is_not_enough_even_when_frames_are_far_apart() -> None:
    detector = FreezeDetector(CHECKS)
    assert run(detector, [None, 0.0, 0.0], every=15.0) == [False, False, True]


def test_a_clock_going_backwards_restarts_the_freeze_timer() -> None:
    detector = FreezeDetector(CHECKS)
    run(detector, [None, 0.0, 0.0, 0.0, 0.0, 0.0])
    assert detector.update(3.0, 0.0) is False


# --- properties ----------------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(mean=st.floats(0, 255), spread=st.floats(0, 80), seed=st.integers(0, 2**32 - 1),
       blur=st.floats(0, 6))
def test_measures_are_finite_and_in_range(mean: float, spread: float, seed: int,
                                          blur: float) -> None:
    rng = np.random.default_rng(seed)
    frame = rng.normal(mean, spread, (H, W)).astype(np.float32)
    if blur:
        frame = cv2.GaussianBlur(frame, (0, 0), blur)
    thumb = thumbnail(np.clip(frame, 0, 255).astype(np.uint8))
    m = measure(thumb, thumb, None)
    values = [m.luma_mean, m.luma_std, m.sharpness, m.uniform_fraction, m.contrast, m.change]
    assert all(v is not None and np.isfinite(v) and v >= 0 for v in values)
    assert 0 <= m.uniform_fraction <= 1 and 0 <= m.luma_mean <= 255
    assert m.change == 0.0
    assert picture_reasons(m, None, CHECKS) <= PICTURE_REASONS - {"blurred", "moved"}


def test_measures_are_plain_values() -> None:
    m = measure(thumbnail(shoot(view())), None, None)
    assert isinstance(m, Measures)
    with pytest.raises(AttributeError):
        m.luma_mean = 0.0  # type: ignore[misc]


# --- real frames: H.264 clips decoded with PyAV ------------------------------------------


def encode(path: Path, source: str, seconds: float = 6.0) -> Path:
    subprocess.run(
        ["ffmpeg", "-loglevel", "error", "-y", "-f", "lavfi", "-i", source, "-t", str(seconds),
         "-g", "10", "-c:v", "libx264", "-qp", "23", "-pix_fmt", "yuv420p", str(path)],
        check=True, timeout=60)
    return path


def keyframes(path: Path) -> list[tuple[float, Frame]]:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.codec_context.skip_frame = "NONKEY"
        return [(float(f.time or 0.0), f.to_ndarray(format="gray"))
                for f in container.decode(stream)]


def analyse(path: Path, checks: CameraChecks) -> list[frozenset[str]]:
    learner = ReferenceLearner(checks, min_samples=3)
    freeze = FreezeDetector(checks)
    previous, out = None, []
    for ts, gray in keyframes(path):
        thumb = thumbnail(gray)
        m = measure(thumb, previous, learner.reference)
        reasons = picture_reasons(m, learner.reference, checks)
        if freeze.update(ts, m.change):
            reasons |= {"frozen"}
        learner.feed(ts, thumb, m, reasons)
        out.append(reasons)
        previous = thumb
    assert learner.reference is not None, "the clean clip must be learnable"
    return out


SOURCE = "testsrc2=size=640x360:rate=10"


def test_a_real_live_clip_raises_nothing(tmp_path: Path) -> None:
    clip = encode(tmp_path / "live.mp4", f"{SOURCE},noise=alls=12:allf=t")
    verdicts = analyse(clip, camera_checks(learn_for=2, frozen_after=3))
    assert len(verdicts) >= 6
    assert verdicts == [frozenset()] * len(verdicts)


def test_a_real_frozen_stream_is_frozen_and_a_real_still_scene_is_not(tmp_path: Path) -> None:
    checks = camera_checks(learn_for=2, frozen_after=3)
    # The encoder keeps going while the source is stuck on one picture.
    stuck = encode(tmp_path / "stuck.mp4",
                   f"{SOURCE},trim=end_frame=1,loop=loop=-1:size=1,setpts=N/10/TB")
    verdicts = analyse(stuck, checks)
    assert len(verdicts) >= 6
    # Keyframes every second: unchanged since t=0, frozen from t=3 s on, and nothing else.
    assert verdicts[:3] == [frozenset()] * 3
    assert verdicts[3:] == [{"frozen"}] * (len(verdicts) - 3)
    # A live camera looking at a still scene: only its sensor noise changes.
    still = encode(tmp_path / "still.mp4",
                   f"{SOURCE},trim=end_frame=1,loop=loop=-1:size=1,setpts=N/10/TB,"
                   "noise=alls=3:allf=t")
    assert analyse(still, checks) == [frozenset()] * len(keyframes(still))


def test_real_faults_on_a_decoded_frame(tmp_path: Path) -> None:
    clip = encode(tmp_path / "live.mp4", f"{SOURCE},noise=alls=12:allf=t", seconds=2)
    frames = [gray for _, gray in keyframes(clip)]
    reference = learn(frames * 40, CHECKS)
    gray = frames[0]
    assert check(gray, reference) == frozenset()
    assert check(cv2.GaussianBlur(gray, (0, 0), 3), reference) == {"blurred"}
    assert check(np.roll(gray, W // 4, axis=1), reference) == {"moved"}
    assert check((gray * 0.1).astype(np.uint8), reference) == {"too_dark"}
    patch = gray.copy()
    patch[:, : int(W * 0.9)] = 128
    assert check(patch, reference) == {"covered"}


def test_a_decoders_y_plane_in_limited_range_reads_like_full_range_gray(tmp_path: Path) -> None:
    clip = encode(tmp_path / "live.mp4", f"{SOURCE},noise=alls=12:allf=t", seconds=1)
    black = encode(tmp_path / "black.mp4", "color=black:size=640x360:rate=10", seconds=1)
    for path in (clip, black):
        with av.open(str(path)) as container:
            frame = next(container.decode(video=0))
        plane = frame.planes[0]
        y = np.frombuffer(plane, np.uint8).reshape(-1, plane.line_size)[:frame.height, :W]
        full = thumbnail(frame.to_ndarray(format="gray"))
        expanded = thumbnail(y, limited_range=True)
        assert float(np.abs(expanded.astype(np.int16) - full).mean()) < 1.0
    assert int(y.min()) == 16  # limited range: black is 16, not 0
    # Unexpanded, a black frame would read as a dark, flat view: a covered lens.
    assert check(y, None) == {"too_dark", "covered"}
    assert picture_reasons(measure(thumbnail(y, limited_range=True), None, None), None,
                           CHECKS) == {"black"}
