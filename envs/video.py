"""Videos of a policy, one per task: mp4 files, and animated GIFs for TensorBoard.

Rendering needs an OpenGL backend that works without a display; on this project's machines that
is EGL (Mesa, software: about 0.1 s per 128x96 frame). ``make_vector_env`` sets ``MUJOCO_GL=egl``
when asked to render, unless the user set another backend (see its docstring for why that is
early enough).
"""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path

import gymnasium as gym
import imageio.v2 as imageio
import numpy as np
from PIL import Image
from tensorboard.compat.proto.summary_pb2 import Summary

from mtrl.envs.benchmarks import BenchmarkSpec, make_vector_env, upright
from mtrl.envs.evaluation import PolicyFn

DEFAULT_CAMERA = "corner2"  # shows the robot and the whole table


@dataclasses.dataclass(frozen=True)
class TaskVideo:
    """One task's recording: the mp4 written and its frames (uint8 ``[T, H, W, 3]``)."""

    path: Path
    frames: np.ndarray


def record_videos(
    policy_fn: PolicyFn,
    spec: BenchmarkSpec,
    seed: int,
    out_dir: Path,
    episodes_per_task: int = 1,
    width: int = 160,
    height: int = 120,
    camera_name: str = DEFAULT_CAMERA,
    fps: int | None = None,
    fast: bool = True,
) -> dict[str, TaskVideo]:
    """Run the policy on every task at once and write ``out_dir/<task>.mp4`` for each.

    The episodes of a task follow one another in its video. Frames are captured after reset and
    after each step but an episode's last (under SAME_STEP autoreset that step already returns the
    next episode's first state), so an episode gives ``episode_length`` frames. Every task renders
    at every step; ``fast`` drops shadows and anti-aliasing, which under software EGL cut the cost
    of a frame about six-fold (to ~15 ms) while the scene stays clear. ``fps`` defaults to
    Meta-World's real-time rate (80). ``width`` and ``height`` must be even (H.264).
    """
    if isinstance(episodes_per_task, bool) or not isinstance(episodes_per_task, int):
        raise ValueError(f"episodes_per_task must be an int >= 1, got {episodes_per_task!r}")
    if episodes_per_task < 1:
        raise ValueError(f"episodes_per_task must be an int >= 1, got {episodes_per_task!r}")
    if width < 2 or height < 2 or width % 2 or height % 2:
        raise ValueError(f"width and height must be even and >= 2 (H.264), got {width}x{height}")
    # In-process (sync) sub-envs, so that their render settings can be changed below.
    spec = dataclasses.replace(spec, vector_strategy="sync")
    env = make_vector_env(
        spec, seed, render_mode="rgb_array", width=width, height=height, camera_name=camera_name
    )
    try:
        if fast:
            _drop_costly_render_effects(env)
        fps = fps or env.get_attr("metadata")[0]["render_fps"]
        frames: list[list[np.ndarray]] = [[] for _ in spec.tasks]
        finished = np.zeros(spec.num_tasks, dtype=np.int64)
        obs, _ = env.reset()
        while True:
            for i, frame in enumerate(env.call("render")):
                if finished[i] < episodes_per_task:
                    frames[i].append(upright(frame, camera_name))
            obs, _, terminated, truncated, _ = env.step(policy_fn(obs))
            finished += np.logical_or(terminated, truncated)
            if np.all(finished >= episodes_per_task):
                break
    finally:
        env.close()

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    videos = {}
    for task, task_frames in zip(spec.tasks, frames, strict=True):
        path = out_dir / f"{task}.mp4"
        stacked = np.stack(task_frames)
        # The default macro block (16) would resize frames; H.264 only needs even sizes.
        imageio.mimwrite(path, stacked, fps=fps, macro_block_size=2)
        videos[task] = TaskVideo(path=path, frames=stacked)
    return videos


def _drop_costly_render_effects(env: gym.vector.SyncVectorEnv) -> None:
    """Turn off shadows and multisampling; must run before the first render, which builds the
    rendering context from these settings."""
    for sub_env in env.envs:
        quality = sub_env.unwrapped.model.vis.quality
        quality.shadowsize = 0
        quality.offsamples = 0


def gif_summary(frames: np.ndarray, tag: str, fps: int = 25) -> Summary:
    """A TensorBoard image summary holding ``frames`` (uint8 ``[T, H, W, 3]``) as an animated GIF.

    TensorBoard plays animated GIF image summaries as videos; this avoids ``add_video``, which
    needs moviepy 1.x. Log it with ``SummaryWriter.file_writer.add_summary(summary, step)``.
    Browsers slow down GIF frames shorter than 20 ms, so fps is capped at 50.
    """
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 [T, H, W, 3], got {frames.dtype} {frames.shape}")
    if fps < 1:
        raise ValueError(f"fps must be >= 1, got {fps}")
    images = [Image.fromarray(frame) for frame in frames]
    buffer = io.BytesIO()
    images[0].save(
        buffer,
        format="GIF",
        save_all=True,
        append_images=images[1:],
        duration=max(20, round(1000 / fps)),
        loop=0,
    )
    _, height, width, channels = frames.shape
    image = Summary.Image(
        height=height, width=width, colorspace=channels, encoded_image_string=buffer.getvalue()
    )
    return Summary(value=[Summary.Value(tag=tag, image=image)])
