"""ShanghaiTech Campus (STC), one scene per ``--class-name`` (01..12), layout as distributed:

    training/videos/<scene>_<nnn>.avi                  defect-free training videos
    testing/frames/<scene>_<nnnn>/<frame>.jpg          test frames
    testing/test_frame_mask/<scene>_<nnnn>.npy         one 0/1 label per frame
    testing/test_pixel_mask/<scene>_<nnnn>.npy         T x H x W pixel masks

Training videos are decoded once, streaming frame by frame with PyAV (never a whole
video in memory), to ``training/frames/<video>/<%08d>.jpg`` (JPEG quality 80). A
``.complete`` marker written last makes later runs skip a video; a folder without it
(an interrupted extraction) is decoded again. Pixel masks are read per frame from the
npy files (memory-mapped), not held in memory.
"""
import functools
import glob
import os
import shutil
from typing import List, Tuple

import numpy as np
from tqdm import tqdm

from custom_datasets.common import LabelledImages, check_readable, image_size, list_images, require_dir
from utils.errors import CflowError

STC_CLASS_NAMES = tuple(f'{i:02d}' for i in range(1, 13))  # scene 13 has no test ground truth
JPEG_QUALITY = 80
STC_MEAN, STC_STD = (0.5, 0.5, 0.5), (0.225, 0.225, 0.225)  # the published STC normalisation
COMPLETE_MARKER = '.complete'


def import_av():
    try:
        import av
    except ImportError:
        raise CflowError('PyAV is needed to decode the STC training videos: pip install av') from None
    return av


def extract_video_frames(video_path: str, frames_dir: str) -> List[str]:
    """Decode ``video_path`` to JPEG frames in ``frames_dir`` once; return the frame paths."""
    marker = os.path.join(frames_dir, COMPLETE_MARKER)
    if os.path.isfile(marker):
        return list_images(frames_dir, ('.jpg',))
    if os.path.isdir(frames_dir):
        shutil.rmtree(frames_dir)  # an interrupted extraction: its frames are not trusted
    os.makedirs(frames_dir)
    av = import_av()
    try:
        with av.open(video_path) as container:
            stream = container.streams.video[0]
            name = os.path.basename(video_path)
            for i, frame in enumerate(tqdm(container.decode(stream), total=stream.frames or None,
                                           desc=f'extracting {name}', leave=False, disable=None)):
                frame.to_image().save(os.path.join(frames_dir, f'{i:08d}.jpg'), quality=JPEG_QUALITY)
    except (av.error.FFmpegError, IndexError) as exc:
        shutil.rmtree(frames_dir, ignore_errors=True)
        raise CflowError(f'cannot decode video {video_path} ({exc}): replace or remove the file') from None
    frames = list_images(frames_dir, ('.jpg',))
    if not frames:
        raise CflowError(f'video {video_path} has no frames: replace or remove the file')
    with open(marker, 'w') as f:
        f.write(f'{len(frames)}\n')
    return frames


def training_frames(root: str, scene: str) -> List[str]:
    video_dir = os.path.join(root, 'training', 'videos')
    require_dir(video_dir, 'STC training video folder', 'the STC layout needs training/videos/<scene>_<nnn>.avi')
    videos = sorted(glob.glob(os.path.join(video_dir, f'{scene}_*.avi')))
    if not videos:
        raise CflowError(f'no training videos for scene {scene} in {video_dir} (expected {scene}_001.avi, ...)')
    frames = []
    for video in tqdm(videos, desc=f'STC scene {scene} training videos', disable=None):
        name = os.path.splitext(os.path.basename(video))[0]
        frames += extract_video_frames(video, os.path.join(root, 'training', 'frames', name))
    return frames


def _frame_of(npy_path: str, index: int) -> np.ndarray:
    return np.asarray(np.load(npy_path, mmap_mode='r')[index])


def labelled_test_frames(root: str, scene: str) -> Tuple[List[str], List[int], list]:
    testing = os.path.join(root, 'testing')
    frame_root = os.path.join(testing, 'frames')
    require_dir(frame_root, 'STC test frame folder', 'the STC layout needs testing/frames/<scene>_<nnnn>/')
    clips = sorted(d for d in glob.glob(os.path.join(frame_root, f'{scene}_*')) if os.path.isdir(d))
    if not clips:
        raise CflowError(f'no test clips for scene {scene} in {frame_root} (expected {scene}_0001/, ...)')
    images, labels, masks = [], [], []
    for clip in clips:
        name = os.path.basename(clip)
        frames = list_images(clip, ('.jpg', '.jpeg', '.png'))
        label_path = os.path.join(testing, 'test_frame_mask', f'{name}.npy')
        mask_path = os.path.join(testing, 'test_pixel_mask', f'{name}.npy')
        for path in (label_path, mask_path):
            if not os.path.isfile(path):
                raise CflowError(f'test clip {clip} has no ground truth: expected {path}')
        frame_labels = np.load(label_path).reshape(-1)
        mask_shape = np.load(mask_path, mmap_mode='r').shape
        mask_frames = mask_shape[0]
        if not len(frames) == len(frame_labels) == mask_frames:
            raise CflowError(f'test clip {name} has {len(frames)} frames but {len(frame_labels)} frame labels '
                             f'and {mask_frames} pixel masks: the three must match')
        if frames and image_size(frames[0])[::-1] != tuple(mask_shape[1:]):
            width, height = image_size(frames[0])
            raise CflowError(f'{mask_path} holds {mask_shape[2]}x{mask_shape[1]} masks but the frames of {name} are '
                             f'{width}x{height}: masks must have their frame\'s size')
        images += frames
        labels += [int(v != 0) for v in frame_labels]
        # As published: a frame labelled normal gets an all-zero mask, whatever the mask file holds.
        masks += [functools.partial(_frame_of, mask_path, i) if frame_labels[i] else None for i in range(len(frames))]
    check_readable(images)
    return images, labels, masks


def stc_dataset(root: str, scene: str, input_size: int, train: bool, **norm) -> LabelledImages:
    """The training frames or the labelled test frames of one STC scene."""
    if scene not in STC_CLASS_NAMES:
        raise CflowError(f'unknown STC scene {scene!r}: choose one of {", ".join(STC_CLASS_NAMES)} '
                         f'(scene 13 has no ground truth)')
    require_dir(root, 'STC folder', 'download ShanghaiTech Campus and pass --data-path to the folder holding '
                'training/ and testing/ (default ./data/STC/shanghaitech)')
    if train:
        frames = training_frames(root, scene)
        return LabelledImages(frames, [0] * len(frames), [None] * len(frames), input_size, True, **norm)
    return LabelledImages(*labelled_test_frames(root, scene), input_size=input_size, train=False, **norm)
