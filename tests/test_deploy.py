"""Using a trained model on new images: calibration, calibrated metrics, predict, ONNX, compact file."""
import csv
import json
import os
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from config import parse_config
from utils.images import read_rgb, to_model_input
from custom_models.anomaly_model import AnomalyModel
from main import main
from utils.anomaly_map import anomaly_maps, calibrated_maps
from utils.calibration import CALIBRATION_KEY
from utils.errors import CflowError
from custom_models.model_file import read_model, save_compact

from tests.conftest import reference_checkpoint, TRAIN
from tests.test_errors import assert_one_line_error

def load(path):
    c = parse_config(['--no-cuda'])
    model = read_model(path, {'input_size': 64, 'norm_mean': c.norm_mean, 'norm_std': c.norm_std})
    return AnomalyModel(model.encoder, model.decoders, model.settings['input_size'], model.settings['norm_mean'],
                        model.settings['norm_std'], model.calibration).eval(), model


def demo_images(demo_root, folder, n):
    paths = sorted(os.listdir(os.path.join(demo_root, 'textile', 'test', folder)))[:n]
    return torch.stack([to_model_input(read_rgb(os.path.join(demo_root, 'textile', 'test', folder, p)), 64)
                        for p in paths])


def test_trained_checkpoint_keeps_the_authors_format_and_adds_calibration(trained):
    _, checkpoint, _ = trained
    state = torch.load(checkpoint, map_location='cpu', weights_only=True)
    assert {'encoder_state_dict', 'decoder_state_dict'} <= set(state) and CALIBRATION_KEY in state
    cal = state[CALIBRATION_KEY]
    assert cal['n_images'] == 16 and 'calibration' in cal['source'] and cal['settings']['input_size'] == 64


def test_stored_thresholds_are_those_of_the_calibration_images(trained):
    """t_I and t_P recomputed from the deployable model's own maps of the calibration images."""
    root, checkpoint, _ = trained
    model, loaded = load(checkpoint)
    folder = root / 'calibration' / 'day1'
    images = torch.stack([to_model_input(read_rgb(str(folder / p)), 64) for p in sorted(os.listdir(folder))])
    with torch.inference_mode():
        maps, scores = model(images)
    cal = loaded.calibration
    top, median = np.quantile(scores.numpy(), 0.99), np.median(scores.numpy())
    assert cal['image_threshold'] == pytest.approx(top + 0.1 * (top - median), rel=1e-4)
    assert cal['pixel_threshold'] == pytest.approx(min(cal['image_threshold'], np.quantile(maps.numpy(), 0.999)),
                                                   rel=1e-4)


def test_calibrated_map_of_an_image_does_not_depend_on_the_rest_of_its_batch(trained):
    _, checkpoint, demo_root = trained
    model, _ = load(checkpoint)
    good, bad = demo_images(demo_root, 'good', 6), demo_images(demo_root, 'stain', 6)
    with torch.inference_mode():
        alone = model(good[:1])[0][0]
        with_good = model(good)[0][0]
        with_bad = model(torch.cat([good[:1], bad]))[0][0]
        log_probs_good = [lp for lp in model.log_probs(good)]
        log_probs_bad = [lp for lp in model.log_probs(torch.cat([good[:1], bad]))]
    scale = alone.abs().max()
    # equal to float32 round-off (batched convolutions round differently), whatever else is in the batch
    assert (with_good - alone).abs().max() / scale < 1e-5 and (with_bad - alone).abs().max() / scale < 1e-5
    # the published test-set normalisation, by contrast, changes the same image's map with its company
    published_good = anomaly_maps(log_probs_good, (64, 64))[0]
    published_bad = anomaly_maps(log_probs_bad, (64, 64))[0]
    assert np.abs(published_good - published_bad).max() > 100 * 1e-5 * np.abs(published_good).max()


def test_module_equals_the_float64_calibrated_maps(trained):
    _, checkpoint, demo_root = trained
    model, loaded = load(checkpoint)
    images = torch.cat([demo_images(demo_root, 'good', 3), demo_images(demo_root, 'scratch', 3)])
    with torch.inference_mode():
        maps, scores = model(images)
        reference = calibrated_maps(model.log_probs(images), (64, 64), loaded.calibration)
    assert np.abs(maps.numpy() - reference).max() / np.abs(reference).max() < 1e-5
    assert np.allclose(scores.numpy(), reference.reshape(6, -1).max(1), rtol=1e-5, atol=1e-6)


def test_calibration_images_sit_below_their_thresholds(trained):
    """On the calibration images themselves: maps >= 0 (S_ref is their max), at most 1% of them above
    the image threshold (a 0.99 quantile plus a margin), and the first layer's max log p is m_0."""
    root, checkpoint, _ = trained
    model, loaded = load(checkpoint)
    paths = sorted((root / 'calibration' / 'day1').iterdir())
    images = torch.stack([to_model_input(read_rgb(str(p)), 64) for p in paths])
    with torch.inference_mode():
        maps, scores = model(images)
        log_probs = model.log_probs(images)
    cal = loaded.calibration
    assert maps.min() >= -1e-5 * cal['sum_max'] and maps.min() <= 1e-5 * cal['sum_max']
    assert (scores.numpy() > cal['image_threshold']).mean() <= 0.01
    assert float(log_probs[0].max()) == pytest.approx(cal['log_p_max'][0], rel=1e-5)


def test_norm_test_reports_calibrated_metrics_and_decisions(trained, tmp_path):
    _, checkpoint, demo_root = trained
    argv = TRAIN + ['--data-path', demo_root, '--action-type', 'norm-test', '--checkpoint', checkpoint,
                    '--output-dir', str(tmp_path)]
    argv.remove('--encoder-weights'), argv.remove('none')
    assert main(argv) == 0
    (report,) = [f for f in os.listdir(tmp_path / 'results') if f.endswith('.json')]
    epoch = json.load(open(tmp_path / 'results' / report))['epochs'][0]
    cal = epoch['calibrated']
    assert set(cal) >= {'DET_AUROC', 'SEG_AUROC', 'SEG_AUPRO', 'at_stored_threshold', 'at_f1_optimal_threshold_oracle'}
    # the decisions at the stored threshold, recounted from the deployable model's scores
    model, loaded = load(checkpoint)
    with torch.inference_mode():
        good = model(demo_images(demo_root, 'good', 16))[1].numpy()
        bad = np.concatenate([model(demo_images(demo_root, d, 12))[1].numpy() for d in ('scratch', 'stain')])
    t = loaded.calibration['image_threshold']
    assert cal['at_stored_threshold']['fpr'] == pytest.approx((good > t).mean())
    assert cal['at_stored_threshold']['recall'] == pytest.approx((bad > t).mean())
    assert cal['at_f1_optimal_threshold_oracle']['f1'] >= cal['at_stored_threshold']['f1']


def test_calibrate_an_authors_checkpoint(tmp_path, demo_root):
    source = reference_checkpoint('cflow_r18')
    output = tmp_path / 'r18_calibrated.pt'
    assert main(['--action-type', 'calibrate', '--checkpoint', source, '-inp', '128', '--no-cuda', '--workers', '0',
                 '--calibration-path', os.path.join(demo_root, 'textile', 'train'), '--output', str(output)]) == 0
    state = torch.load(output, map_location='cpu', weights_only=True)
    original = torch.load(source, map_location='cpu', weights_only=True)
    for l, decoder in enumerate(original['decoder_state_dict']):  # the authors' entries, untouched
        assert all(torch.equal(v, state['decoder_state_dict'][l][k]) for k, v in decoder.items())
    settings = state[CALIBRATION_KEY]['settings']
    assert (settings['enc_arch'], settings['pool_layers'], settings['coupling_blocks'], settings['input_size']) == \
        ('resnet18', 3, 4, 128)
    assert state[CALIBRATION_KEY]['n_images'] == 64


@pytest.fixture(scope='module')
def predicted(trained, tmp_path_factory):
    _, checkpoint, demo_root = trained
    folder = tmp_path_factory.mktemp('inputs')
    shutil.copytree(os.path.join(demo_root, 'textile', 'test', 'scratch'), folder / 'line2' / 'scratch')
    shutil.copytree(os.path.join(demo_root, 'textile', 'test', 'good'), folder / 'line1')
    Image.open(folder / 'line1' / '000.png').resize((300, 150)).save(folder / 'line1' / 'wide.jpg')
    (folder / 'line1' / 'broken.png').write_bytes(b'not an image')
    out = tmp_path_factory.mktemp('predicted')
    assert main(['--action-type', 'predict', '--checkpoint', checkpoint, '--input', str(folder), '--output-dir',
                 str(out), '--no-cuda', '--workers', '2', '-bs', '8']) == 0
    return folder, out, checkpoint


def test_predict_writes_maps_masks_and_tables_and_skips_unreadable_files(predicted):
    folder, out, checkpoint = predicted
    rows = list(csv.DictReader(open(out / 'predictions.csv')))
    report = json.load(open(out / 'predictions.json'))
    assert len(rows) == 12 + 16 + 1 and report['summary']['skipped'] == 1
    assert report['skipped'][0]['source'].endswith('broken.png')
    threshold = report['image_threshold']
    for row in rows:
        defective = float(row['score']) > threshold
        assert row['decision'] == ('defective' if defective else 'good')
        mask = np.asarray(Image.open(out / row['mask']))
        with Image.open(row['source']) as image:
            assert mask.shape == (image.height, image.width)  # masks at the image's own size
        assert (mask > 0).sum() == int(row['defect_pixels']) and (int(row['defect_pixels']) > 0) == defective
        assert os.path.isfile(out / row['overlay'])
    # the input tree mirrored, extension kept: no two inputs share an output
    assert any(r['overlay'] == os.path.join('overlays', 'line2', 'scratch', '000.png.png') for r in rows)
    assert len({r['overlay'] for r in rows}) == len(rows) and len({r['mask'] for r in rows}) == len(rows)
    assert report['summary']['status'] == 'complete' and len(report['predictions']) == len(rows)
    assert sum(r['decision'] == 'defective' for r in rows if 'scratch' in r['source']) >= 6


def test_predict_scores_equal_the_model_on_the_same_images(predicted, trained):
    folder, out, checkpoint = predicted
    _, _, demo_root = trained
    rows = {os.path.basename(r['source']): float(r['score']) for r in csv.DictReader(open(out / 'predictions.csv'))
            if '/line1/' in r['source'] and r['source'].endswith('.png')}
    model, _ = load(checkpoint)
    with torch.inference_mode():
        scores = model(demo_images(demo_root, 'good', 16))[1].numpy()
    expected = dict(zip(sorted(os.listdir(os.path.join(demo_root, 'textile', 'test', 'good'))), scores))
    for name, score in rows.items():
        assert score == pytest.approx(float(expected[name]), rel=1e-5)


def test_predict_on_a_video_writes_frames_and_an_annotated_video(trained, tmp_path):
    import av
    _, checkpoint, demo_root = trained
    video = tmp_path / 'line.mp4'
    frames = [os.path.join(demo_root, 'textile', 'test', d, f'{i:03d}.png') for d in ('good', 'stain') for i in range(3)]
    with av.open(str(video), 'w') as container:
        stream = container.add_stream('mpeg4', rate=5)
        stream.width = stream.height = 192
        stream.pix_fmt = 'yuv420p'
        for path in frames:
            for packet in stream.encode(av.VideoFrame.from_image(Image.open(path).convert('RGB'))):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    assert main(['--action-type', 'predict', '--checkpoint', checkpoint, '--input', str(video), '--output-dir',
                 str(tmp_path / 'out'), '--no-cuda', '-bs', '4']) == 0
    rows = list(csv.DictReader(open(tmp_path / 'out' / 'predictions.csv')))
    assert [int(r['frame']) for r in rows] == list(range(6))
    with av.open(str(tmp_path / 'out' / 'line_annotated.mp4')) as container:
        assert sum(1 for _ in container.decode(video=0)) == 6


@pytest.mark.parametrize('batch', [1, 8])
def test_onnx_matches_pytorch(exported, trained, batch):
    from utils.export_onnx import OnnxModel
    out, checkpoint = exported
    model, _ = load(checkpoint)
    onnx_model = OnnxModel(str(out / 'model.onnx'))
    images = torch.cat([demo_images(trained[2], 'good', 4), demo_images(trained[2], 'stain', 4)])[:batch]
    with torch.inference_mode():
        maps, scores = model(images)
    onnx_maps, onnx_scores = onnx_model(images)
    assert onnx_maps.shape == (batch, 64, 64) and onnx_scores.shape == (batch,)
    assert np.abs(onnx_maps - maps.numpy()).max() / np.abs(maps.numpy()).max() < 1e-4
    assert np.allclose(onnx_scores, scores.numpy(), rtol=1e-4)
    assert onnx_model.calibration['image_threshold'] == model.calibration['image_threshold']


def test_predict_runs_the_onnx_file_with_the_same_results(exported, predicted, tmp_path):
    out, _ = exported
    folder, first, _ = predicted
    assert main(['--action-type', 'predict', '--checkpoint', str(out / 'model.onnx'), '--input', str(folder),
                 '--output-dir', str(tmp_path), '--workers', '0']) == 0
    torch_rows = list(csv.DictReader(open(first / 'predictions.csv')))
    onnx_rows = list(csv.DictReader(open(tmp_path / 'predictions.csv')))
    assert [r['source'] for r in onnx_rows] == [r['source'] for r in torch_rows]
    for a, b in zip(onnx_rows, torch_rows):
        assert float(a['score']) == pytest.approx(float(b['score']), rel=1e-4)


def test_compact_file_scores_like_its_checkpoint_and_drops_the_redundant_tensors(exported, trained):
    out, checkpoint = exported
    original, loaded = load(checkpoint)
    compact, compact_loaded = load(str(out / 'model.safetensors'))
    images = torch.cat([demo_images(trained[2], 'good', 3), demo_images(trained[2], 'scratch', 3)])
    with torch.inference_mode():
        a, b = original(images), compact(images)
    assert (a[0] - b[0]).abs().max() / a[0].abs().max() < 1e-5 and torch.allclose(a[1], b[1], rtol=1e-5)
    assert compact_loaded.calibration == loaded.calibration
    # what the compact file leaves out: each block's w_perm_inv (C x C float32); the encoder (random) is stored
    redundant = sum(4 * v.numel() for d in loaded.decoders for k, v in d.state_dict().items() if k.endswith('w_perm_inv'))
    assert os.path.getsize(checkpoint) - os.path.getsize(out / 'model.safetensors') >= redundant


def test_norm_test_loads_the_compact_file(exported, trained, tmp_path):
    out, checkpoint = exported
    results = {}
    for name, path in (('pt', checkpoint), ('compact', str(out / 'model.safetensors'))):
        argv = ['--dataset', 'demo', '--data-path', trained[2], '--action-type', 'norm-test', '--checkpoint', path,
                '--no-cuda', '--workers', '0', '--output-dir', str(tmp_path / name), '-enc', 'resnet18',
                '-inp', '64', '-cb', '2']
        assert main(argv) == 0
        (report,) = [f for f in os.listdir(tmp_path / name / 'results') if f.endswith('.json')]
        results[name] = json.load(open(tmp_path / name / 'results' / report))['epochs'][0]
    for metric in ('DET_AUROC', 'SEG_AUROC'):
        assert results['compact'][metric] == pytest.approx(results['pt'][metric], abs=1e-6)


def test_compact_file_leaves_out_a_stock_encoder_and_checks_it_by_checksum(trained, tmp_path, monkeypatch):
    """With the encoder's weights in the torch hub cache as "the ImageNet file", the compact file
    records it by checksum instead of storing it; a different cached file is refused on load."""
    from custom_models.encoders import imagenet_cache_path
    from utils.errors import CflowError
    _, checkpoint, _ = trained
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'hub'))
    _, loaded = load(checkpoint)
    cache = imagenet_cache_path('resnet18')
    os.makedirs(os.path.dirname(cache))
    torch.save(loaded.encoder.net.state_dict(), cache)
    stored = save_compact(str(tmp_path / 'stock.safetensors'), loaded)
    assert not stored['encoder_stored']
    encoder_bytes = sum(4 * v.numel() for k, v in loaded.encoder.net.state_dict().items() if v.dtype == torch.float32)
    assert os.path.getsize(checkpoint) - os.path.getsize(tmp_path / 'stock.safetensors') > encoder_bytes
    again = read_model(str(tmp_path / 'stock.safetensors'), {})
    assert all(torch.equal(v, again.encoder.net.state_dict()[k]) for k, v in loaded.encoder.net.state_dict().items())
    state = torch.load(cache, weights_only=True)
    state['conv1.weight'] = state['conv1.weight'] + 1e-3
    torch.save(state, cache)
    with pytest.raises(CflowError, match='are not the ones'):
        read_model(str(tmp_path / 'stock.safetensors'), {})


# ----------------------------------------------------------------------------------
# Errors: one line, exit status 2, nothing half-written


def run(capsys, argv):
    rc = main(argv)
    return rc, capsys.readouterr().err


def test_uncalibrated_checkpoint_without_a_calibration_folder(capsys, tmp_path, demo_root):
    rc, err = run(capsys, ['--action-type', 'predict', '--checkpoint', reference_checkpoint('cflow_r18'),
                           '-inp', '128', '--input', demo_root, '--output-dir', str(tmp_path)])
    assert_one_line_error(rc, err, 'has no calibration', '--calibration-path', '--action-type calibrate')


def test_empty_or_unreadable_calibration_folder(capsys, tmp_path, trained):
    _, checkpoint, _ = trained
    (tmp_path / 'empty').mkdir()
    rc, err = run(capsys, ['--action-type', 'calibrate', '--checkpoint', checkpoint, '--calibration-path',
                           str(tmp_path / 'empty')])
    assert_one_line_error(rc, err, 'holds 0 images', 'at least 2')
    (tmp_path / 'bad').mkdir()
    for name in ('a.png', 'b.png'):
        (tmp_path / 'bad' / name).write_bytes(b'garbage')
    rc, err = run(capsys, ['--action-type', 'calibrate', '--checkpoint', checkpoint, '--calibration-path',
                           str(tmp_path / 'bad')])
    assert_one_line_error(rc, err, 'cannot read image', 'a.png')


def test_missing_input_and_undecodable_video(capsys, tmp_path, trained):
    _, checkpoint, _ = trained
    rc, err = run(capsys, ['--action-type', 'predict', '--checkpoint', checkpoint, '--input', str(tmp_path / 'no'),
                           '--output-dir', str(tmp_path / 'out')])
    assert_one_line_error(rc, err, 'does not exist', '--input')
    (tmp_path / 'broken.mp4').write_bytes(b'\x00' * 1000)
    rc, err = run(capsys, ['--action-type', 'predict', '--checkpoint', checkpoint, '--input',
                           str(tmp_path / 'broken.mp4'), '--output-dir', str(tmp_path / 'out')])
    assert_one_line_error(rc, err, 'cannot decode video', 'broken.mp4')
    assert not any(f.endswith('.mp4') for f in os.listdir(tmp_path / 'out'))  # no half-written video


def test_unwritable_output_folder(capsys, tmp_path, trained):
    _, checkpoint, demo_root = trained
    (tmp_path / 'file').write_text('x')
    rc, err = run(capsys, ['--action-type', 'predict', '--checkpoint', checkpoint, '--input', demo_root,
                           '--output-dir', str(tmp_path / 'file' / 'out')])
    assert_one_line_error(rc, err, 'cannot write into --output-dir')


def test_onnx_input_size_must_match(capsys, exported, tmp_path, trained):
    out, _ = exported
    rc, err = run(capsys, ['--action-type', 'predict', '--checkpoint', str(out / 'model.onnx'), '-inp', '128',
                           '--input', trained[2], '--output-dir', str(tmp_path)])
    assert_one_line_error(rc, err, 'model.onnx was made with -inp 64, but -inp 128 was passed', 'drop -inp')


# ----------------------------------------------------------------------------------
# predict keeps every result, apart


def test_predict_gives_every_input_its_own_outputs_and_never_scores_its_own(trained, tmp_path):
    _, checkpoint, demo_root = trained
    good = os.path.join(demo_root, 'textile', 'test', 'good')
    folder = tmp_path / 'in'
    (folder / 'a').mkdir(parents=True)
    shutil.copy(os.path.join(good, '000.png'), folder / 'x.png')
    Image.open(os.path.join(good, '001.png')).save(folder / 'x.jpg')           # same stem, other extension
    shutil.copy(os.path.join(good, '002.png'), folder / 'a' / 'b.png')
    shutil.copy(os.path.join(good, '003.png'), folder / 'a__b.png')           # the old flat name of a/b.png
    args = ['--action-type', 'predict', '--checkpoint', checkpoint, '--input', str(folder), '--no-cuda', '-bs', '2',
            '--workers', '0']
    out = folder / 'results'  # inside the input folder
    for _ in range(2):  # a rerun must not score the first run's overlays and masks
        assert main(args + ['--output-dir', str(out)]) == 0
        rows = list(csv.DictReader(open(out / 'predictions.csv')))
        assert sorted(os.path.relpath(r['source'], folder) for r in rows) == ['a/b.png', 'a__b.png', 'x.jpg', 'x.png']
    overlays = [np.asarray(Image.open(out / r['overlay'])) for r in rows]
    assert len({r['overlay'] for r in rows}) == 4 and len({r['mask'] for r in rows}) == 4
    assert not any(np.array_equal(overlays[0], o) for o in overlays[1:])  # four different pictures


def test_predict_without_output_dir_writes_to_a_folder_of_its_own(trained, tmp_path, monkeypatch):
    _, checkpoint, demo_root = trained
    monkeypatch.chdir(tmp_path)
    image = os.path.join(demo_root, 'textile', 'test', 'good', '000.png')
    assert main(['--action-type', 'predict', '--checkpoint', checkpoint, '--input', image, '--no-cuda',
                 '--workers', '0']) == 0
    assert sorted(os.listdir(tmp_path)) == ['predictions']
    assert os.path.isfile(tmp_path / 'predictions' / '000.png' / 'predictions.csv')


def test_predict_keeps_the_rows_scored_before_a_failure(trained, tmp_path, monkeypatch, capsys):
    import predict
    _, checkpoint, demo_root = trained
    real_open = predict.open_detector

    def failing_open(c, streams=1):
        detector = real_open(c, streams)
        real_run, calls = detector.run, []

        def run(images):
            calls.append(1)
            if len(calls) == 3:
                raise CflowError('cannot decode frame 4 of the input (simulated)')
            return real_run(images)
        detector.run = run
        return detector
    monkeypatch.setattr(predict, 'open_detector', failing_open)
    out = tmp_path / 'out'
    rc = main(['--action-type', 'predict', '--checkpoint', checkpoint, '--input',
               os.path.join(demo_root, 'textile', 'test', 'good'), '--output-dir', str(out), '--no-cuda', '-bs', '2',
               '--workers', '0'])
    assert rc == 2
    rows = list(csv.DictReader(open(out / 'predictions.csv')))
    assert len(rows) == 4  # the two batches scored before the failure
    report = json.load(open(out / 'predictions.json'))
    assert report['summary']['status'] == 'failed' and 'frame 4' in report['summary']['error']
    assert [r['source'] for r in report['predictions']] == [r['source'] for r in rows]
    assert 'rows are kept' in capsys.readouterr().out


def test_predict_index_page_links_every_overlay(predicted):
    import re
    _, out, _ = predicted
    page = (out / 'index.html').read_text()
    rows = list(csv.DictReader(open(out / 'predictions.csv')))
    links = re.findall(r'<img src="([^"]+)"', page)
    assert len(links) == len(rows) and all(os.path.isfile(out / link) for link in links)
    decisions = re.findall(r'<b>(defective|good)</b>', page)
    assert decisions == sorted(decisions, key=lambda d: d != 'defective')  # defective first
    assert '<script' not in page and 'http' not in page


def test_predict_index_page_renders_in_a_headless_browser(predicted, tmp_path):
    import subprocess
    browser = shutil.which('chromium') or shutil.which('chromium-browser') or shutil.which('google-chrome')
    if browser is None:
        pytest.skip('no headless browser installed (the page structure is checked above)')
    _, out, _ = predicted
    shot = tmp_path / 'page.png'
    subprocess.run([browser, '--headless', '--no-sandbox', '--disable-gpu', '--window-size=900,700',
                    f'--screenshot={shot}', (out / 'index.html').as_uri()], capture_output=True, timeout=120)
    pixels = np.asarray(Image.open(shot).convert('RGB'), dtype=np.float32)
    red = ((pixels[..., 0] > 150) & (pixels[..., 1] < 60) & (pixels[..., 2] < 60)).mean()
    assert pixels.std() > 20 and red > 0.001  # pictures drawn, defective banners (red) among them


def test_predict_on_only_unreadable_files_exits_non_zero_with_one_line(trained, tmp_path, capsys):
    _, checkpoint, _ = trained
    folder = tmp_path / 'broken'
    folder.mkdir()
    for name in ('a.png', 'b.jpg'):
        (folder / name).write_bytes(b'not an image')
    capsys.readouterr()
    assert main(['--action-type', 'predict', '--checkpoint', checkpoint, '--input', str(folder), '--output-dir',
                 str(tmp_path / 'out'), '--no-cuda', '--workers', '0', '--scores-only']) == 2
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and 'no input could be scored: all 2 were unreadable' in err
    assert json.load(open(tmp_path / 'out' / 'predictions.json'))['summary']['skipped'] == 2  # still recorded


def test_fail_on_skip_makes_one_unreadable_file_an_error(predicted, tmp_path, capsys):
    folder, _, checkpoint = predicted
    capsys.readouterr()
    assert main(['--action-type', 'predict', '--checkpoint', checkpoint, '--input', str(folder), '--output-dir',
                 str(tmp_path / 'out'), '--no-cuda', '--workers', '0', '--scores-only', '--fail-on-skip']) == 2
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and '1 input(s) could not be read' in err and 'broken.png' in err
    rows = list(csv.DictReader(open(tmp_path / 'out' / 'predictions.csv')))
    assert len(rows) == 12 + 16 + 1  # the readable ones are scored and kept
