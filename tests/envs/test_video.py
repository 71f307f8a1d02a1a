import io
import itertools
import os

import imageio.v2 as imageio
import numpy as np
import pytest
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.utils.tensorboard import SummaryWriter

from mtrl.envs.benchmarks import BenchmarkSpec, make_vector_env
from mtrl.envs.vec_env import MetaWorldVecEnv
from mtrl.envs.video import gif_summary, record_videos

WIDTH, HEIGHT = 32, 24
TINY_REACH = BenchmarkSpec("mt1", "reach-v3", episode_length=10)
# CI renders with OSMesa and sets this, so that a broken backend fails there instead of skipping.
RENDERING_REQUIRED = os.environ.get("MTRL_REQUIRE_RENDERING") == "1"


@pytest.fixture(scope="module")
def render_env():
    """A rendering env, or a skip when this machine cannot render (probed once)."""
    try:
        env = make_vector_env(
            TINY_REACH,
            seed=0,
            render_mode="rgb_array",
            width=WIDTH,
            height=HEIGHT,
            camera_name="corner2",
        )
        env.reset()
        env.call("render")
    except Exception as error:  # any backend failure means: no rendering here
        if RENDERING_REQUIRED:
            raise
        pytest.skip(f"rendering unavailable (MUJOCO_GL backend failed): {error!r}")
    yield env
    env.close()


def zero_policy(obs):
    return np.zeros((len(obs), 4), dtype=np.float32)


def test_record_videos_writes_one_mp4_per_task(render_env, tmp_path):
    videos = record_videos(
        zero_policy,
        TINY_REACH,
        seed=0,
        out_dir=tmp_path / "videos",
        episodes_per_task=2,
        width=WIDTH,
        height=HEIGHT,
    )
    assert list(videos) == ["reach-v3"]
    video = videos["reach-v3"]
    assert video.path == tmp_path / "videos" / "reach-v3.mp4"
    assert video.path.stat().st_size > 0
    assert video.frames.dtype == np.uint8
    # the task's two episodes one after the other
    assert video.frames.shape == (2 * TINY_REACH.episode_length, HEIGHT, WIDTH, 3)
    assert video.frames.std() > 0  # a scene, not a blank frame
    assert len(imageio.mimread(video.path)) == len(video.frames)


@pytest.mark.slow
def test_every_mt10_task_renders_its_own_scene(render_env, tmp_path):
    """Several environments rendering in one process once gave each other's frames
    (Meta-World#448): each task's video must show its own scene, never a blank one."""
    spec = BenchmarkSpec("mt10", episode_length=3)
    videos = record_videos(zero_policy, spec, 0, tmp_path, width=128, height=96)
    first_frames = {task: video.frames[0] for task, video in videos.items()}
    assert len(first_frames) == 10
    for task, frame in first_frames.items():
        assert frame.std() > 10, f"{task}'s frame is blank"
    for (a, frame_a), (b, frame_b) in itertools.combinations(first_frames.items(), 2):
        # The tasks share the robot and the table. At this size the smallest objects (reach's
        # goal, push's puck, pick-place's cylinder) differ in a dozen pixels; another env's
        # frame, or a stale one, would differ in none.
        assert (frame_a != frame_b).any(axis=-1).sum() > 5, f"{a} and {b} look the same"


def test_odd_frame_sizes_are_rejected_before_rendering(tmp_path):
    with pytest.raises(ValueError, match="must be even"):
        record_videos(zero_policy, TINY_REACH, 0, tmp_path, width=33, height=24)


def test_adapter_images_are_upright(render_env):
    raw = render_env.call("render")[0]
    adapter = MetaWorldVecEnv(render_env)  # shares the fixture's env; closed by the fixture
    (image,) = adapter.get_images()
    np.testing.assert_array_equal(image, raw[::-1, ::-1])  # "corner2" is rolled by 180°


def test_gif_summary_is_logged_as_a_tensorboard_image(tmp_path):
    frames = np.random.default_rng(0).integers(0, 256, (6, 24, 32, 3), dtype=np.uint8)
    summary = gif_summary(frames, "video/reach-v3", fps=10)
    with SummaryWriter(tmp_path) as writer:
        writer.file_writer.add_summary(summary, global_step=7)
    events = EventAccumulator(str(tmp_path))
    events.Reload()
    assert "video/reach-v3" in events.Tags()["images"]
    (image,) = events.Images("video/reach-v3")
    assert image.step == 7
    assert (image.width, image.height) == (32, 24)
    gif = Image.open(io.BytesIO(image.encoded_image_string))
    assert gif.format == "GIF"
    assert gif.n_frames == 6


def test_gif_summary_rejects_non_video_arrays():
    with pytest.raises(ValueError, match=r"uint8 \[T, H, W, 3\]"):
        gif_summary(np.zeros((24, 32, 3), dtype=np.uint8), "video")
