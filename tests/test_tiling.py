"""Tiling (``--tile``): the grid, the stitching, the one-tile identity with the untiled model, a tiled model
trained by the command line and carried through calibrate / export / load_model / predict / the service, and
the one-line errors of bad tile settings."""
import csv
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from custom_models import load_model
from custom_models.detector import detector_from_model
from custom_models.model_file import read_model
from main import main
from tests.test_errors import assert_one_line_error, run_cli
from utils.anomaly_map import anomaly_maps, calibrated_maps, stitched_maps
from utils.errors import CflowError
from utils.tiling import Tiling, grid_starts, stitch, tile_layout

# ----------------------------------------------------------------------------------
# The grid and the stitching


@pytest.mark.parametrize('length,tile,overlap', [(1024, 256, 0), (1000, 256, 32), (300, 128, 100), (128, 128, 0),
                                                 (129, 128, 0), (2000, 256, 200)])
def test_the_grid_covers_the_axis_with_the_overlap_and_ends_on_the_edge(length, tile, overlap):
    starts = grid_starts(length, tile, overlap)
    assert starts[0] == 0 and starts[-1] == length - tile  # no padding: the last tile lies on the edge
    covered = np.zeros(length, int)
    for s in starts:
        covered[s:s + tile] += 1
    assert covered.min() >= 1
    assert all(b - a <= tile - overlap for a, b in zip(starts, starts[1:]))  # at least O pixels shared
    assert len(starts) == len(set(starts))


def test_stitching_a_known_map_puts_every_tile_back_and_averages_the_overlaps():
    # T = inp: one canvas cell per pixel, so tiles cut from a known map must stitch back to it exactly
    size, tiling = (300, 200), Tiling(128, 32)
    layout = tile_layout(size, tiling, 128)
    assert [x for x, _ in layout.boxes[:3]] == [0, 96, 172] and sorted({y for _, y in layout.boxes}) == [0, 72]
    y, x = np.mgrid[0:200, 0:300]
    truth = (x + 1000.0 * y).astype(np.float32)
    tiles = [truth[y0:y0 + 128, x0:x0 + 128] for x0, y0 in layout.boxes]
    np.testing.assert_array_equal(stitch(tiles, layout), truth)
    # tile k filled with k: each pixel gets the mean of the indices of the tiles covering it
    stitched = stitch([np.full((128, 128), float(k), np.float32) for k in range(len(layout))], layout)
    for px, py in ((0, 0), (100, 10), (299, 199), (150, 100), (171, 71), (172, 72)):
        covering = [k for k, (x0, y0) in enumerate(layout.boxes) if x0 <= px < x0 + 128 and y0 <= py < y0 + 128]
        assert stitched[py, px] == pytest.approx(np.mean(covering)), (px, py, covering)


def test_a_coarser_canvas_places_each_tile_at_the_models_density():
    # T = 256 at inp 64: a quarter cell per pixel; the 1000 x 600 image scaled by --image-size 500 first
    layout = tile_layout((1000, 600), Tiling(256, 64, image_size=500), 64)
    assert layout.size == (500, 300) and layout.canvas == (125, 75)
    assert layout.cells[-1] == (61, 11) and layout.cells[-1][0] + 64 == 125  # the edge tile ends on the edge
    canvas = stitch([np.ones((64, 64), np.float32)] * len(layout), layout)
    assert canvas.shape == (75, 125) and np.all(canvas == 1)


def test_bad_tile_settings_are_one_line_each():
    for tiling, fragment in ((Tiling(64, 64), '--tile-overlap 64 must be smaller than --tile 64'),
                             (Tiling(64, -1), '--tile-overlap must be 0 or more'),
                             (Tiling(0), '--tile must be at least 1'),
                             (Tiling(256, 0, image_size=200), '--image-size 200 is smaller than --tile 256')):
        with pytest.raises(CflowError, match=fragment):
            tiling.check()
    with pytest.raises(CflowError, match=r'the image is 300x100 px, smaller than --tile 128: .*--tile 100'):
        tile_layout((300, 100), Tiling(128), 64)


# ----------------------------------------------------------------------------------
# One tile over the whole square image is the untiled model


def test_one_tile_stitched_test_maps_equal_the_published_and_calibrated_maps():
    gen = torch.Generator().manual_seed(0)
    log_probs = [torch.randn(5, s, s, generator=gen, dtype=torch.float64) * 3 - 10 for s in (8, 4, 2)]
    layouts = [tile_layout((192, 192), Tiling(192), 32)] * 5
    np.testing.assert_array_equal(stitched_maps(log_probs, layouts, 32), anomaly_maps(log_probs, (32, 32)))
    calibration = {'log_p_max': [-7.0, -8.0, -9.0], 'sum_max': 2.5, 'cell_grids': [[4.0, 1.5], [8.0, 3.5],
                                                                                    [16.0, 7.5]]}
    np.testing.assert_array_equal(stitched_maps(log_probs, layouts, 32, calibration),
                                  calibrated_maps(log_probs, (32, 32), calibration))


def test_one_tile_over_the_whole_image_gives_every_map_score_and_decision_of_the_untiled_model(trained):
    from actions import calibration_on_images
    from custom_datasets.common import list_images_recursive
    from custom_datasets.loaders import LoaderOptions
    from custom_models.scoring import ScoreOptions
    root, checkpoint, demo_root = trained
    loaded = read_model(checkpoint, {})
    settings = {**loaded.settings, 'tile': 192, 'tile_overlap': 0, 'image_size': None}  # demo images: 192 px
    # the same images in the same batches (one per call; CPU kernels' round-off may depend on the batch size)
    calibration_paths = list_images_recursive(str(root / 'calibration'))
    tiled_calibration = calibration_on_images(loaded.encoder, loaded.decoders, settings, calibration_paths,
                                              loaded.calibration['source'], ScoreOptions(), LoaderOptions(batch_size=1))
    untiled_calibration = calibration_on_images(loaded.encoder, loaded.decoders, loaded.settings, calibration_paths,
                                                loaded.calibration['source'], ScoreOptions(),
                                                LoaderOptions(batch_size=1))
    assert {k: v for k, v in tiled_calibration.items() if k != 'settings'} == \
        {k: v for k, v in untiled_calibration.items() if k != 'settings'}
    untiled = detector_from_model(loaded, untiled_calibration, 'cpu', checkpoint)
    loaded.settings = settings
    tiled = detector_from_model(loaded, tiled_calibration, 'cpu', checkpoint)
    assert tiled.tiling is not None and untiled.tiling is None
    paths = list_images_recursive(os.path.join(demo_root, 'textile', 'test'))[::3]
    # one image per model call on both sides (the CPU kernels' round-off may depend on the batch size)
    tiled.prepare(1)
    for a, b in zip(untiled.predict(paths, batch_size=1), tiled.predict(paths, batch_size=1)):
        assert a.score == b.score and a.defective == b.defective
        np.testing.assert_array_equal(a.model_map, b.model_map)
        np.testing.assert_array_equal(a.anomaly_map, b.anomaly_map)
        np.testing.assert_array_equal(a.mask, b.mask)
    assert any(p.defective for p in untiled.predict(paths))


# ----------------------------------------------------------------------------------
# A tiled model made by the command line, carried through every action


TILED_TRAIN = ['-enc', 'resnet18', '-inp', '64', '-bs', '64', '-cb', '2', '--meta-epochs', '1', '--sub-epochs', '1',
               '--workers', '0', '--no-cuda', '--encoder-weights', 'none', '--tile', '128', '--tile-overlap', '32']


@pytest.fixture(scope='module')
def tiled(tmp_path_factory):
    """A high-resolution class (256 px, 9 tiles of 128 each) and a tiled model trained and calibrated on it."""
    from custom_datasets.highres import make_highres_class
    root = tmp_path_factory.mktemp('tiled')
    class_dir = make_highres_class(str(root / 'data'), 'fine', seed=3, image_size=256, n_train=8, n_calibration=4,
                                   n_test_good=2, n_test_defect=2)
    assert main(['--dataset', 'folder', '--data-path', str(root / 'data'), '-cl', 'fine', *TILED_TRAIN,
                 '--output-dir', str(root / 'out'), '--calibration-path', os.path.join(class_dir, 'calibration')]) == 0
    (checkpoint,) = [p for p in (root / 'out' / 'weights').iterdir() if p.name.endswith('_final.pt')]
    wide = Image.open(os.path.join(class_dir, 'test', 'spot', '000.png')).crop((0, 0, 256, 170))
    wide.save(root / 'wide.png')  # not square: edge tiles on one axis only
    return root, str(checkpoint), class_dir


def test_training_uses_every_tile_of_the_good_images_and_records_the_tiling(tiled):
    root, checkpoint, class_dir = tiled
    (results,) = [p for p in (root / 'out' / 'results').iterdir() if p.suffix == '.json']
    record = json.load(open(results))
    assert record['settings']['tile'] == 128 and 'SEG_AUROC' in record['epochs'][-1]['calibrated']
    loaded = read_model(checkpoint, {})
    assert {k: loaded.calibration['settings'][k] for k in ('tile', 'tile_overlap', 'image_size')} == \
        {'tile': 128, 'tile_overlap': 32, 'image_size': None}
    assert loaded.calibration['n_images'] == 4  # images, not tiles


def test_the_stored_thresholds_are_the_calibration_rule_on_the_stitched_maps_of_the_good_images(tiled):
    from custom_datasets.common import list_images_recursive
    from utils.calibration import thresholds_from_maps
    _, checkpoint, class_dir = tiled
    model = load_model(checkpoint)
    canvases = np.stack([p.model_map for p in model.predict(list_images_recursive(os.path.join(class_dir,
                                                                                               'calibration')))])
    assert canvases.shape == (4, 128, 128)  # 256-px images, 128-px tiles at inp 64: half a cell per pixel
    expected = thresholds_from_maps(canvases)
    for name in ('image_threshold', 'pixel_threshold'):
        assert model.calibration[name] == pytest.approx(expected[name], rel=1e-5), name
    # the canvas minimum is 0 somewhere: S_ref is the stitched maps' maximum of S over the good images
    assert canvases.min() == pytest.approx(0, abs=1e-5)


def test_training_tiles_kept_in_memory_are_the_tiles_read_from_the_files(tiled, monkeypatch):
    import custom_datasets.tiles as tiles
    from custom_datasets.folder import folder_dataset
    _, _, class_dir = tiled
    images = folder_dataset(os.path.dirname(class_dir), 'fine', 64, True)
    kept = tiles.TiledTrainingImages(images, Tiling(128, 32))
    monkeypatch.setattr(tiles, 'TILE_CACHE_BYTES', 0)
    read = tiles.TiledTrainingImages(images, Tiling(128, 32))
    assert kept.cached is not None and read.cached is None
    assert len(kept) == 8 * 9  # every grid tile of every training image
    for key in ((0, 11), (13, 12), (71, 13)):
        torch.testing.assert_close(kept[key][0], read[key][0], rtol=0, atol=0)


def test_a_tiled_model_round_trips_through_export_load_model_and_predict(tiled, tmp_path):
    root, checkpoint, class_dir = tiled
    for name in ('model.onnx', 'model.safetensors'):
        assert main(['--action-type', 'export', '--checkpoint', checkpoint, '--output', str(tmp_path / name)]) == 0
    images = [str(root / 'wide.png'), os.path.join(class_dir, 'test', 'scratch', '001.png')]
    reference = load_model(checkpoint).predict(images)
    for name, atol in (('model.safetensors', 0), ('model.onnx', 2e-5)):
        model = load_model(str(tmp_path / name))
        assert model.tiling == Tiling(128, 32)
        for a, b in zip(reference, model.predict(images)):
            np.testing.assert_allclose(a.anomaly_map, b.anomaly_map, atol=atol, rtol=0)
            assert a.score == pytest.approx(b.score, abs=atol) and a.defective == b.defective
    wide = reference[0]
    assert wide.anomaly_map.shape == wide.mask.shape == (170, 256)  # the image's own size
    assert wide.model_map.shape == (85, 128)  # the canvas: 64 cells per 128-px tile
    assert main(['--action-type', 'predict', '--checkpoint', str(tmp_path / 'model.onnx'), '--input',
                 str(root / 'wide.png'), '--output-dir', str(tmp_path / 'pred'), '--workers', '0']) == 0
    (row,) = list(csv.DictReader(open(tmp_path / 'pred' / 'predictions.csv')))
    assert float(row['score']) == pytest.approx(wide.score, abs=2e-5)
    mask = np.asarray(Image.open(tmp_path / 'pred' / row['mask'])) > 0
    assert mask.shape == (170, 256)
    assert json.load(open(tmp_path / 'pred' / 'predictions.json'))['settings']['tile'] == 128


def test_tiles_are_scored_a_few_at_a_time_with_the_maps_of_one_batch(tiled):
    root, checkpoint, _ = tiled
    image = Image.open(root / 'wide.png').resize((900, 600))  # 10 x 6 tiles
    model = load_model(checkpoint)
    whole = model.predict(image)
    calls, run = [], model.run
    model.run = lambda tiles: calls.append(tiles.shape[0]) or run(tiles)
    model.prepare(5)
    part = model.predict(image)
    assert max(calls) == 5 and sum(calls) == 60
    np.testing.assert_allclose(part.anomaly_map, whole.anomaly_map, atol=1e-6, rtol=0)


def test_calibrate_and_norm_test_apply_the_tiling_the_file_states(tiled, tmp_path, capsys):
    root, checkpoint, class_dir = tiled
    out = tmp_path / 'again.pt'
    assert main(['--action-type', 'calibrate', '--checkpoint', checkpoint, '--calibration-path',
                 os.path.join(class_dir, 'calibration'), '--output', str(out), '--workers', '0']) == 0
    again = read_model(str(out), {}).calibration
    first = read_model(checkpoint, {}).calibration
    assert again['settings']['tile'] == 128
    assert again['image_threshold'] == pytest.approx(first['image_threshold'], rel=1e-9)
    capsys.readouterr()
    assert main(['--action-type', 'norm-test', '--checkpoint', str(out), '--dataset', 'folder', '--data-path',
                 os.path.dirname(class_dir), '-cl', 'fine', '-enc', 'resnet18', '-cb', '2', '--workers', '0',
                 '--output-dir', str(tmp_path / 'test')]) == 0
    assert 'Calibrated maps' in capsys.readouterr().out


def test_bad_tile_settings_on_the_command_line_are_one_line(tiled, trained, capsys, tmp_path):
    root, checkpoint, class_dir = tiled
    data = ['--dataset', 'folder', '--data-path', os.path.dirname(class_dir), '-cl', 'fine']
    assert_one_line_error(*run_cli(capsys, data + ['--tile', '64', '--tile-overlap', '64']),
                          '--tile-overlap 64 must be smaller than --tile 64')
    assert_one_line_error(*run_cli(capsys, data + ['--tile-overlap', '8']), '--tile-overlap is for tiled models')
    assert_one_line_error(*run_cli(capsys, data + ['--tile', '300', '-enc', 'resnet18', '--encoder-weights', 'none',
                                                   '--workers', '0']), 'smaller than --tile 300')
    assert_one_line_error(*run_cli(capsys, ['--action-type', 'predict', '--checkpoint', trained[1], '--input',
                                            class_dir, '--tile', '128']), 'calibrated on whole images, not tiles')
    assert_one_line_error(*run_cli(capsys, ['--action-type', 'export', '--checkpoint', checkpoint, '--quantize',
                                            'int8', '--calibration-path', class_dir,
                                            '--output', str(tmp_path / 'q.xml')]),
                          'not available for a tiled model')
    assert_one_line_error(*run_cli(capsys, data + ['--model', 'differnet', '--tile', '128']), '--tile is for CFLOW')
    Image.open(root / 'wide.png').crop((0, 0, 100, 100)).save(tmp_path / 'small.png')
    assert_one_line_error(*run_cli(capsys, ['--action-type', 'predict', '--checkpoint', checkpoint, '--input',
                                            str(tmp_path / 'small.png'), '--output-dir', str(tmp_path / 'p'),
                                            '--workers', '0']), 'smaller than --tile 128')
    with pytest.raises(CflowError, match='the image is 100x100 px, smaller than --tile 128'):
        load_model(checkpoint).predict(str(tmp_path / 'small.png'))


def test_the_service_scores_tiles_and_answers_a_too_small_image_with_422(tiled, tmp_path):
    from tests.test_service import Server
    root, checkpoint, _ = tiled
    Image.open(root / 'wide.png').crop((0, 0, 100, 100)).save(tmp_path / 'small.png')
    server = Server(checkpoint, str(tmp_path), '--max-batch', '4')
    try:
        status, body, _ = server.predict(str(root / 'wide.png'))
        assert status == 200
        assert body['score'] == pytest.approx(load_model(checkpoint).predict(str(root / 'wide.png')).score, abs=1e-6)
        status, body, _ = server.predict(str(tmp_path / 'small.png'))
        assert status == 422 and 'smaller than --tile 128' in body['error']
        assert server.predict(str(root / 'wide.png'))[0] == 200  # still serving
    finally:
        server.stop()


def test_the_submission_writer_gives_a_tiled_models_maps_at_each_images_own_size(tiled, tmp_path):
    import tifffile
    from custom_datasets.synthetic import make_mvtec_ad2_layout
    from utils.submission_files import as_float16
    _, checkpoint, _ = tiled
    data = str(tmp_path / 'ad2')
    make_mvtec_ad2_layout(data, width=260, height=200, n_train=1, n_validation=1, n_test_good=1, n_test_defect=2,
                          n_private=1)
    out = tmp_path / 'submission'
    assert main(['--action-type', 'submission', '--dataset', 'mvtec_ad2', '-cl', 'can', '--data-path', data,
                 '--checkpoint', checkpoint, '--output-dir', str(out), '--no-cuda', '--workers', '0']) == 0
    image = os.path.join(data, 'can', 'test_public', 'bad', '001_regular.png')
    written = tifffile.imread(out / 'anomaly_images' / 'can' / 'test_public' / 'bad' / '001_regular.tiff')
    assert written.shape == (200, 260)
    np.testing.assert_array_equal(written, as_float16(load_model(checkpoint).predict(image).anomaly_map))
    assert 'SEG_F1' in json.load(open(out / 'metrics_can.json'))


def test_image_size_scales_the_longer_side_before_tiling(tiled):
    from utils.images import scale_image
    root, checkpoint, _ = tiled
    loaded = read_model(checkpoint, {})
    loaded.settings = {**loaded.settings, 'image_size': 256}
    model = detector_from_model(loaded, loaded.calibration, 'cpu', checkpoint)
    large = Image.open(root / 'wide.png').resize((512, 340), Image.BICUBIC)
    result = model.predict(large)
    assert result.model_map.shape == (85, 128) and result.anomaly_map.shape == result.mask.shape == (340, 512)
    scaled = model.predict(scale_image(large, (256, 170)))  # the same image, scaled by hand first
    np.testing.assert_array_equal(result.model_map, scaled.model_map)
    assert result.score == scaled.score
