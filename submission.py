"""``--action-type submission``: the files MVTec AD 2's evaluation server takes, for one object.

    python main.py --action-type submission --dataset mvtec_ad2 -cl can --checkpoint FILE --output-dir OUT

Writes ``OUT/anomaly_images/`` (float16 TIFF maps) and ``OUT/anomaly_images_thresholded/`` (0/255 PNG masks)
for test_private and test_private_mixed, and for test_public/{good,bad} so that the official evaluation can
be run on them locally (``utils/submission_files.py``); a resumed run skips the images already written. Then
it prints and writes the benchmark's metrics of test_public, computed from the written maps
(``OUT/metrics_<object>.json``). The maps are predict's (each image's own size), the masks predict's
(decided defective, then A > t_M) at the model file's stored thresholds; an uncalibrated model is first
calibrated on validation/good, the benchmark's rule (or on --calibration-path).
"""
import json
import os

from actions import benchmark_pass, calibrate_images, calibrate_on_folder, model_settings
from custom_datasets.mvtec_ad2 import CALIBRATION_SOURCE, PRIVATE_SPLITS, good_images, private_images, public_test
from custom_models import load_model
from custom_models.detector import detector_from_model
from custom_models.model_file import read_model
from utils.atomic import atomic_write_text
from utils.model_kinds import is_exported
from utils.progress import count
from utils.segmentation_benchmark import benchmark_limits


def open_detector(c):
    """The calibrated model of --checkpoint; an uncalibrated .pt/.safetensors calibrated first (file unchanged)."""
    if is_exported(c.checkpoint) or (c.calibration is not None and not c.calibration_path):
        return load_model(c.checkpoint, device=c.device)
    loaded = read_model(c.checkpoint, model_settings(c)).to(c.device)
    if c.calibration_path:
        calibration = calibrate_on_folder(c, loaded.encoder, loaded.decoders)
    else:
        calibration = calibrate_images(c, loaded.encoder, loaded.decoders,
                                       good_images(c.data_path, c.class_name, 'validation'), CALIBRATION_SOURCE)
    return detector_from_model(loaded, calibration, c.device, c.checkpoint)


def run_submission(c) -> dict:
    images, labels, masks = public_test(c.data_path, c.class_name)  # the layout checked before the model loads
    private = {split: private_images(c.data_path, c.class_name, split) for split in PRIVATE_SPLITS}
    detector = open_detector(c)
    for split, paths in private.items():
        benchmark_pass(detector, c.data_path, paths, out_dir=c.output_dir, batch_size=c.batch_size)
        print(f'{c.class_name}/{split}: {count(len(paths), "image")} in {c.output_dir}')
    metrics = benchmark_pass(detector, c.data_path, images, labels, masks, out_dir=c.output_dir,
                             batch_size=c.batch_size, limits=benchmark_limits(c.pro_limit))
    print(f'{c.class_name}/test_public ({count(len(images), "image")}, the written maps): ' +
          ', '.join(f'{name} {value:.2f}' for name, value in metrics.items()))
    report = {'object': c.class_name, 'checkpoint': c.checkpoint, 'split': 'test_public', **metrics,
              'thresholds': detector.thresholds.as_dict(), 'calibration_source': detector.calibration.get('source'),
              'files': {split: len(paths) for split, paths in {**private, 'test_public': images}.items()}}
    path = os.path.join(c.output_dir, f'metrics_{c.class_name}.json')
    atomic_write_text(path, json.dumps(report, indent=1))
    print(f'Submission files in {c.output_dir}/anomaly_images and anomaly_images_thresholded; metrics in {path}')
    return report
