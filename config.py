"""Command-line flags (the published ones, same names and defaults) and derived settings."""
import argparse
import datetime
import os
import sys
from typing import Optional, Tuple

from PIL import Image

# Import-light on purpose (``--help`` must not wait for torch): the heavy modules are
# imported inside the functions that need them.
from custom_models.architectures import DECODER_ARCHS, encoder_family, encoder_names_text
from utils.model_kinds import is_exported, precision_note
from utils.threshold_options import check_threshold_options
from utils.errors import CflowError
from utils.results import model_name

DATASETS = ('mvtec', 'stc', 'folder', 'demo', 'visa', 'mvtec_ad2', 'mtd')
DEFAULT_DATA_PATHS = {'mvtec': './data/MVTec-AD', 'stc': './data/STC/shanghaitech', 'demo': './data/demo',
                      'visa': './data/VisA', 'mvtec_ad2': './data/mvtec_ad_2',
                      'mtd': './data/Magnetic-tile-defect-datasets'}
MODELS = ('cflow', 'differnet')
# flags that mean something to one model only (flag, dest)
CFLOW_ONLY = (('-enc', 'enc_arch'), ('-dec', 'dec_arch'), ('-pl', 'pool_layers'), ('--pro', 'pro'),
              ('--pro-limit', 'pro_limit'), ('--scorer', 'scorer'), ('--fiber-chunk', 'fiber_chunk'),
              ('--adam', 'adam'), ('--bf16', 'bf16'), ('--compile', 'compile'), ('--test-cache-mb', 'test_cache_mb'),
              ('--save-best', 'save_best'), ('--tile', 'tile'), ('--tile-overlap', 'tile_overlap'),
              ('--image-size', 'image_size'))
DIFFERNET_ONLY = (('--transforms', 'transforms'), ('--test-transforms', 'test_transforms'),
                  ('--fixed-rotations', 'fixed_rotations'), ('--flow-width', 'flow_width'))
# DifferNet's published settings (its config.py), for every flag the user leaves out
DIFFERNET_DEFAULTS = {'input_size': 448, 'batch_size': 24, 'meta_epochs': 24, 'sub_epochs': 8, 'coupling_blocks': 8}
FIBER_BATCH = 256  # N: fibers per training step, as published
ACTIONS = ('norm-train', 'norm-test', 'calibrate', 'predict', 'export', 'submission', 'serve')
DEPLOY_ACTIONS = ('calibrate', 'predict', 'export')  # a model file in, no dataset
# actions whose model file's weights state the architecture (no -enc/-cb needed)
WEIGHTS_STATE_ARCH = DEPLOY_ACTIONS + ('submission', 'serve')
DEFAULT_WORKERS = min(4, os.cpu_count() or 1)
# --dataset demo: for each size flag the user leaves out (dest: (flag, value)).
DEMO_DEFAULTS = {'enc_arch': ('-enc', 'resnet18'), 'input_size': ('-inp', 128),
                 'meta_epochs': ('--meta-epochs', 4), 'sub_epochs': ('--sub-epochs', 4)}


class Settings(argparse.Namespace):
    """The flags and everything derived from them, fixed once ``derive`` has run: actions read the
    settings and never write them (what an action finds out, it returns)."""

    def __setattr__(self, name, value):
        if self.__dict__.get('_frozen'):
            raise AttributeError(f'settings are derived once, in config.derive: {name} cannot be set by an action')
        super().__setattr__(name, value)

    def freeze(self) -> 'Settings':
        self.__dict__['_frozen'] = True
        return self

    def items(self) -> dict:
        """The settings as a dict (what results files record)."""
        return {k: v for k, v in vars(self).items() if k != '_frozen'}

    def replace(self, **changes) -> 'Settings':
        """A frozen copy with ``changes`` (for tests and benchmarks that vary one setting)."""
        return Settings(**{**self.items(), **changes}).freeze()


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a bad flag is one line on stderr (the usage is one --help away)."""

    def error(self, message):
        sys.stderr.write(f'{self.prog}: error: {message} (see --help)\n')
        sys.exit(2)


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(description='CFLOW-AD: anomaly detection and localization with conditional flows')
    add_published_flags(p.add_argument_group("the published flags (the authors' names and defaults)"))
    add_run_flags(p.add_argument_group('data, runs and model files'))
    add_predict_flags(p.add_argument_group('predict'))
    add_deployment_flags(p.add_argument_group('calibrate and export'))
    add_tiling_flags(p.add_argument_group('high-resolution images: tiles at the image\'s own resolution '
                                          '(stored in the model file; every action applies them)'))
    add_service_flags(p.add_argument_group('serve: the model behind HTTP (--action-type serve)'))
    add_differnet_flags(p.add_argument_group('DifferNet (--model differnet), the image-level flow CFLOW grew from'))
    add_speed_flags(p.add_argument_group('speed (the same results, or opt-in fast modes that change them slightly)'))
    return p


def add_published_flags(p) -> None:
    p.add_argument('--dataset', default='mvtec', type=str, metavar='NAME',
                   help=f'dataset: {"/".join(DATASETS)} (default: mvtec)')
    p.add_argument('--checkpoint', default='', type=str, metavar='FILE',
                   help='checkpoint to test, calibrate, predict with or export (authors\' .pt, our .safetensors '
                        'for predict/export/norm-test, or .onnx for predict)')
    p.add_argument('-cl', '--class-name', default='none', type=str, metavar='NAME',
                   help='class name for MVTec/STC/folder, object for VisA/MVTec AD 2 (default: none)')
    p.add_argument('-enc', '--enc-arch', default='wide_resnet50_2', type=str, metavar='ARCH',
                   help=f'feature extractor: {encoder_names_text()} (default: wide_resnet50_2)')
    p.add_argument('-dec', '--dec-arch', default='freia-cflow', type=str, metavar='ARCH',
                   help='normalizing flow model: freia-cflow/freia-flow (default: freia-cflow)')
    p.add_argument('-pl', '--pool-layers', default=3, type=int, metavar='N',
                   help='number of encoder taps (pool layers), each with its own flow: 1-3, deepest first (default: 3)')
    p.add_argument('-cb', '--coupling-blocks', default=8, type=int, metavar='N',
                   help='number of coupling blocks in the NF model (default: 8)')
    p.add_argument('-run', '--run-name', default=0, type=int, metavar='N',
                   help='run number; also the seed unless --seed is given (default: 0)')
    p.add_argument('-inp', '--input-size', default=256, type=int, metavar='PX',
                   help='image resize dimensions (default: 256); a timm encoder (ViT, EfficientNet) is fed timm\'s '
                        'own size, as published, and -inp only names its run')
    p.add_argument('--action-type', default='norm-train', type=str, metavar='ACTION',
                   help=f'{"/".join(ACTIONS)} (default: norm-train)')
    p.add_argument('-bs', '--batch-size', default=32, type=int, metavar='N',
                   help='images per batch: the published training batch (incomplete ones dropped), and the batch '
                        'of every test, calibration and predict pass, where it changes only speed and memory '
                        '(default: 32)')
    p.add_argument('--lr', type=float, default=2e-4, metavar='LR', help='learning rate (default: 2e-4)')
    p.add_argument('--meta-epochs', type=int, default=25, metavar='N',
                   help='number of meta epochs to train (default: 25)')
    p.add_argument('--sub-epochs', type=int, default=8, metavar='N',
                   help='number of sub epochs to train (default: 8)')
    p.add_argument('--pro', action='store_true', default=False, help='enables estimation of AUPRO metric')
    p.add_argument('--viz', action='store_true', default=False, help='saves test data visualizations')
    p.add_argument('--workers', default=DEFAULT_WORKERS, type=int, metavar='N',
                   help=f'data loading processes; results do not depend on it (default: {DEFAULT_WORKERS}, '
                        f'the published 4 capped at this machine\'s cores)')
    p.add_argument('--gpu', default='0', type=str, metavar='N', help='GPU device number (default: 0)')
    p.add_argument('--no-cuda', action='store_true', default=False, help='disables CUDA training')
    p.add_argument('--video-path', default='.', type=str, metavar='FILE',
                   help='video file path (the published video demo; not supported here)')


def add_run_flags(p) -> None:
    p.add_argument('--data-path', default=None, type=str, metavar='DIR',
                   help='dataset folder (default: ./data/MVTec-AD, ./data/STC/shanghaitech, ./data/demo, ./data/VisA '
                        'or ./data/mvtec_ad_2)')
    p.add_argument('--pro-limit', default=None, type=float, metavar='FPR',
                   help='also report SEG_AUPRO@FPR: the area under the exact PRO curve up to this false-positive '
                        'rate, normalised (as MVTec AD 2\'s evaluation computes it); not for --dataset mvtec, whose '
                        'AUPRO stays the published one (MVTec AD 2 always reports @0.05 and @0.3)')
    p.add_argument('--seed', default=None, type=int, metavar='N',
                   help='seed of every random choice (default: the -run number, so runs 0..3 differ)')
    p.add_argument('--save-best', action='store_true', default=False,
                   help='also keep the checkpoint of the epoch with the best localization AUROC, rewritten '
                        'whenever it improves (the published behaviour; default: the final checkpoint only)')
    p.add_argument('--calibration-path', default=None, metavar='DIR',
                   help='defect-free images not used for training (any folder, recursively): norm-train and '
                        'calibrate take the per-image normalisation and thresholds from them (default after '
                        'norm-train: the training images, an optimistic threshold)')
    p.add_argument('--encoder-weights', default=None, type=str, metavar='PATH',
                   help="torchvision state-dict file of the encoder, or 'none' for a seeded random init "
                        '(default: torchvision IMAGENET1K_V1, downloaded or from the torch hub cache)')
    p.add_argument('--output-dir', default='.', type=str, metavar='DIR',
                   help='where results/, weights/ and viz/ are written (default: .)')
    p.add_argument('--max-image-pixels', default=Image.MAX_IMAGE_PIXELS, type=int, metavar='N',
                   help=f'largest image Pillow will open (its decompression-bomb guard; default: '
                        f'{Image.MAX_IMAGE_PIXELS})')


def add_predict_flags(p) -> None:
    p.add_argument('--input', default=None, metavar='PATH',
                   help='predict: an image, a folder of images (recursively) or a video file')
    p.add_argument('--scores-only', action='store_true', default=False,
                   help='predict: write predictions.csv/.json only, no overlays, masks or annotated video '
                        '(scores and decisions at about the model\'s speed)')
    p.add_argument('--runtime', default=None, choices=('torch', 'onnxruntime', 'openvino'), metavar='NAME',
                   help='predict: torch (.pt/.safetensors), onnxruntime or openvino (an exported .onnx, CPU, fp32) '
                        '(default: torch, onnxruntime for .onnx, openvino for an INT8 .xml)')
    p.add_argument('--streams', default=None, type=int, metavar='N',
                   help='predict, onnxruntime/openvino: images scored at once, each on its share of the threads '
                        '(the same maps; more images per second on a folder) (default: 2 on a folder when the '
                        'machine has 2 cores or more, else 1)')
    p.add_argument('--openvino-cache', default=None, metavar='DIR',
                   help='predict --runtime openvino: its compiled-model cache, so a later run skips most of the '
                        'compile (about the size of the weights per model; default: $XDG_CACHE_HOME or '
                        '~/.cache, /cflow-ad/openvino; none: no cache)')
    p.add_argument('--fail-on-skip', action='store_true', default=False,
                   help='predict: exit with an error when any input cannot be read (default: skip it with a warning; '
                        'a run where no input could be read always fails)')
    p.add_argument('--overlay-format', default='png', choices=('png', 'jpg'),
                   help='predict: overlays as lossless PNG (default) or as JPEG (quality 90, about 10x faster '
                        'to write); masks are always PNG')
    p.add_argument('--image-threshold', default=None, type=float, metavar='T',
                   help='predict: decide defective above this image score instead of the stored t_I')
    p.add_argument('--pixel-threshold', default=None, type=float, metavar='T',
                   help='predict: the mask\'s floor t_P instead of the stored one')
    p.add_argument('--sensitivity', default=None, type=float, metavar='S',
                   help='predict: divide both stored thresholds by S: 2 = twice as sensitive (more images flagged, '
                        'larger masks), 0.5 = half as sensitive, 1 = stored (default: the stored thresholds)')


def add_deployment_flags(p) -> None:
    p.add_argument('--output', default=None, metavar='FILE',
                   help='export: model.onnx (ONNX graph) or model.safetensors (compact file); calibrate: the '
                        'calibrated model file (default: beside --checkpoint, *_calibrated.pt|.safetensors)')
    p.add_argument('--quantize', default=None, choices=('int8',),
                   help='export: an INT8 OpenVINO model (--output NAME.xml, + .bin) by post-training quantization (NNCF), '
                        'ranges and thresholds from --calibration-path (BENCHMARKS.md has its cost in quality)')
    p.add_argument('--quantize-scope', default='encoder', choices=('encoder', 'flows', 'both'),
                   help='export --quantize: what is quantized: the encoder\'s convolutions, the flows\' matrix '
                        'products, or both (default: encoder, the one that kept the quality; BENCHMARKS.md)')


def add_tiling_flags(p) -> None:
    p.add_argument('--tile', default=None, type=int, metavar='T',
                   help='cover each image with T x T pixel tiles, each resized to -inp and scored, the maps stitched '
                        '(overlaps averaged); training uses every tile of the good images (default: off, the '
                        'published resize of the whole image)')
    p.add_argument('--tile-overlap', default=0, type=int, metavar='O',
                   help='--tile: least overlap of neighbouring tiles in pixels; the last row and column lie on '
                        'the edge (default: 0)')
    p.add_argument('--image-size', default=None, type=int, metavar='S',
                   help='--tile: scale each image\'s longer side to S pixels before tiling (default: as read)')


def check_tiling_flags(c, given: set) -> None:
    """--tile's settings, checked once (``utils.tiling.Tiling.check``); its companions need it."""
    from utils.tiling import Tiling
    if c.tile is None:
        companion = next((flag for flag, dest in (('--tile-overlap', 'tile_overlap'), ('--image-size', 'image_size'))
                          if dest in given), None)
        if companion:
            raise CflowError(f'{companion} is for tiled models: pass --tile T too (or drop {companion})')
        return
    Tiling(c.tile, c.tile_overlap, c.image_size).check()


def add_differnet_flags(p) -> None:
    p.add_argument('--model', default='cflow', metavar='NAME', dest='model_type',
                   help='cflow (default) or differnet (Rudolph et al., WACV 2021; its published defaults for every '
                        'size flag left out: -inp 448, -bs 24, --meta-epochs 24, --sub-epochs 8, -cb 8)')
    p.add_argument('--transforms', default=4, type=int, metavar='N',
                   help='differnet: random rotated views of each training image (default: 4)')
    p.add_argument('--test-transforms', default=64, type=int, metavar='N',
                   help='differnet: rotated views an image is scored over (default: 64)')
    p.add_argument('--fixed-rotations', action='store_true', default=False,
                   help='differnet: test views at i * 360 / N degrees (the authors\' localization views) instead of '
                        'seeded random rotations (the published test draws random ones)')
    p.add_argument('--flow-width', default=2048, type=int, metavar='N',
                   help='differnet: internal width of the coupling subnetworks (default: 2048; a file states its own)')


def add_service_flags(p) -> None:
    p.add_argument('--host', default='127.0.0.1', metavar='ADDR',
                   help='serve: address to listen on (default: 127.0.0.1, this machine only; another needs --api-key)')
    p.add_argument('--port', default=8000, type=int, metavar='N', help='serve: TCP port (default: 8000)')
    p.add_argument('--max-batch', default=8, type=int, metavar='N',
                   help='serve: images scored in one model call when requests arrive together (default: 8)')
    p.add_argument('--max-wait-ms', default=5.0, type=float, metavar='MS',
                   help='serve: how long an image waits for others to fill its batch (default: 5)')
    p.add_argument('--max-queue', default=64, type=int, metavar='N',
                   help='serve: requests admitted at once, waiting or being scored; more are answered 503 with '
                        'Retry-After (default: 64)')
    p.add_argument('--max-upload-mb', default=50.0, type=float, metavar='MB',
                   help='serve: largest upload; a larger one is answered 413 (default: 50)')
    p.add_argument('--api-key', default=None, metavar='KEY',
                   help='serve: every endpoint but /health and the page needs header X-API-Key: KEY (default: '
                        '$CFLOW_API_KEY; required with a --host other than 127.0.0.1)')
    p.add_argument('--log-dir', default=None, metavar='DIR',
                   help='serve: append every decision to DIR/decisions.jsonl (time, source, score, decision, model '
                        'SHA-256), flushed per batch')
    p.add_argument('--save-defective', default=None, metavar='DIR',
                   help='serve: keep each image decided defective, with its overlay, in DIR')


def add_speed_flags(p) -> None:
    p.add_argument('--fiber-chunk', default=65536, type=int, metavar='N',
                   help='fibers per decoder call at test time; only memory use changes (default: 65536)')
    p.add_argument('--test-cache-mb', default=4096, type=float, metavar='MB',
                   help='keep the test batches of the first pass in memory up to this size and replay '
                        'them in later meta epochs (same tensors; 0 = read the files every time; default: 4096)')
    p.add_argument('--scorer', default='fused', choices=('fused', 'freia'), metavar='NAME',
                   help='test-time scoring: fused (precomputed condition terms) or the FrEIA modules; '
                        'equal to float32 round-off (default: fused)')
    p.add_argument('--tf32', action='store_true', default=False,
                   help='fast mode: TF32 matmuls/convolutions on CUDA (changes results slightly)')
    p.add_argument('--bf16', action='store_true', default=False,
                   help='fast mode: bfloat16 autocast for the encoder at test time (changes results slightly)')
    p.add_argument('--compile', action='store_true', default=False,
                   help='torch.compile the test-time scorers (same maths, slower start)')
    p.add_argument('--adam', default='fused', choices=('fused', 'published', 'deferred'), metavar='MODE',
                   help='how Adam steps the decoders (every decoder at every fiber batch, as published): fused '
                        '(torch\'s fused kernel; the published trajectory to float32 round-off), published (torch\'s '
                        'default kernel, bit for bit), or deferred (idle decoders\' steps applied in one pass when '
                        'next needed; rounds differently, see README) (default: fused)')
    p.add_argument('--threads', default=None, type=int, metavar='N',
                   help='CPU threads for torch, fixed (default: the cores other processes leave free, '
                        're-measured every 2 s while training)')

def select_device(c) -> str:
    """The torch device to use, with a one-line notice where it is not the asked-for one."""
    import torch
    if c.no_cuda:
        return 'cpu'
    if not torch.cuda.is_available():
        if 'gpu' in getattr(c, 'given', ()):  # every published command passes --gpu 0: say why it is not used
            print(f'Notice: CUDA is not available, so --gpu {c.gpu} is ignored and the CPU is used')
        return 'cpu'
    try:
        index = int(c.gpu)
    except ValueError:
        raise CflowError(f'--gpu takes a device number, got {c.gpu!r}') from None
    if not 0 <= index < torch.cuda.device_count():
        raise CflowError(f'--gpu {index} does not exist: this machine has {torch.cuda.device_count()} '
                         f'CUDA device(s), numbered from 0')
    return f'cuda:{index}'


def apply_demo_defaults(c, given: set) -> None:
    """The demo's own small settings for every size flag the user left out (it would
    otherwise start WideResNet-50 at 256 px for 25 x 8 epochs), and its class names only."""
    from custom_datasets.synthetic import DEMO_CLASS, DEMO_CLASSES
    if c.class_name == 'none':
        c.class_name = DEMO_CLASS
    if c.class_name not in DEMO_CLASSES:
        raise CflowError(f'unknown demo class {c.class_name!r}: choose {DEMO_CLASS} (the default) or a stand-in named '
                         f'after an MVTec AD class: {", ".join(DEMO_CLASSES[1:])}')
    applied = []
    for dest, (flag, value) in DEMO_DEFAULTS.items():
        if dest not in given:
            setattr(c, dest, value)
            applied.append(f'{flag} {value}')
    if applied and c.action_type == 'norm-train':
        print(f'Demo defaults: {" ".join(applied)} (pass a flag to change it)')


FLAG_OF_SETTING = {'input_size': '-inp', 'enc_arch': '-enc', 'pool_layers': '-pl', 'coupling_blocks': '-cb',
                   'dec_arch': '-dec', 'tile': '--tile', 'tile_overlap': '--tile-overlap', 'image_size': '--image-size'}


def apply_file_settings(c, settings: dict, source: str) -> None:
    """Take a model file's own settings; a flag the user passed that contradicts one is an error.
    A timm encoder's input size is not -inp's (which only names its run): ``apply_encoder_input`` takes it."""
    from custom_models.preprocessing import uses_timm_data_config
    timm_input = uses_timm_data_config(settings.get('enc_arch', c.enc_arch))
    for key, value in settings.items():
        if key == 'input_size' and timm_input:
            continue
        flag = FLAG_OF_SETTING.get(key)
        if flag and key in c.given and getattr(c, key) != value:
            raise CflowError(f'{source} was made with {flag} {value}, but {flag} {getattr(c, key)} was passed: '
                             f'drop {flag} (the model file states it)')
        setattr(c, key, tuple(value) if isinstance(value, list) else value)


def check_checkpoint_name(c) -> None:
    """An authors'-style name states the input size, which the weights cannot confirm: taken when -inp
    was left out, another -inp refused (a timm encoder's, which only names the run, is not checked).
    (-enc, -pl, -cb and -dec are checked against the weights themselves when the file is loaded.)"""
    from custom_datasets.mvtec import MVTEC_CLASS_NAMES
    from custom_models.preprocessing import uses_timm_data_config
    from utils.presets import settings_from_checkpoint_name
    named = settings_from_checkpoint_name(c.checkpoint, MVTEC_CLASS_NAMES)
    if named is None or named['inp'] == c.input_size:
        return
    if 'input_size' not in c.given:
        c.input_size = named['inp']
        return
    if uses_timm_data_config(named['enc']):  # a timm run's inp only names it: either name will do
        return
    raise CflowError(f'checkpoint {os.path.basename(c.checkpoint)} is named inp{named["inp"]} but -inp is '
                     f'{c.input_size}: pass -inp {named["inp"]} (or rename the file if its name is wrong)')


def apply_encoder_input(c, stated: dict) -> None:
    """The image size and normalisation the encoder is fed (``custom_models.preprocessing``): what the
    model file states, else the published rule. ``c.run_input_size`` keeps -inp, which names the run."""
    from custom_models.preprocessing import published_input, uses_timm_data_config
    c.run_input_size = c.input_size
    if 'input_size' in stated:  # the file's size, with the normalisation apply_file_settings took from it
        c.input_size = int(stated['input_size'])
        return
    fed = published_input(c.enc_arch, c.input_size, c.norm_mean, c.norm_std)
    if uses_timm_data_config(c.enc_arch) and c.action_type in ('norm-train', 'norm-test'):
        print(f'Notice: {c.enc_arch} is fed timm\'s input size {fed.size} x {fed.size}, normalised with mean = std = '
              f'{fed.mean} (timm\'s mean), as the published code does; -inp {c.input_size} only names the run')
    c.input_size, c.norm_mean, c.norm_std = fed.size, fed.mean, fed.std


def encoder_weights_choice(c) -> str:
    """'checkpoint', 'imagenet', 'none' or a path: where the encoder's weights come from (recorded in
    the results), with a notice where it matters."""
    if c.checkpoint:
        return 'checkpoint'  # every encoder weight comes from the model file
    if c.encoder_weights is not None:
        if c.encoder_weights == 'none':
            print('Notice: random-init encoder (--encoder-weights none); scores are not comparable to the paper')
        return c.encoder_weights
    from custom_models.encoders import imagenet_weights_cached
    from custom_models.weights import torchvision_cache_path
    cached = (os.path.isfile(torchvision_cache_path('alexnet')) if c.model_type == 'differnet'
              else imagenet_weights_cached(c.enc_arch))
    if c.dataset == 'demo' and not cached:
        print(f'Notice: no ImageNet weights for {c.enc_arch} in the torch hub cache; the demo uses a '
              f'seeded random-init encoder (scores are lower than with ImageNet weights)')
        return 'none'
    return 'imagenet'


def given_flags(argv) -> set:
    """The destinations of the flags present in ``argv`` (defaults suppressed)."""
    probe = build_parser()
    for action in probe._actions:
        action.default = argparse.SUPPRESS
    return set(vars(probe.parse_args(argv)))


def check_flags(args, given: Optional[set] = None) -> Settings:
    """The flags checked, with the demo's defaults and the default data folder: everything that needs no
    model file. ``given``: the flags the user passed (for the demo's defaults); None = all of them."""
    c = Settings(**vars(args))
    given = set(vars(c)) if given is None else given
    c.given = sorted(given)  # the flags the user passed: a model file's own settings win over defaults only
    if c.dataset not in DATASETS:
        hint = ' (the published video demo is not supported)' if c.dataset == 'video' else ''
        raise CflowError(f'unknown --dataset {c.dataset!r}{hint}: choose one of {", ".join(DATASETS)}')
    if c.dataset == 'demo':
        apply_demo_defaults(c, given)
    check_model_flags(c, given)
    if c.model_type == 'cflow' and encoder_family(c.enc_arch) is None:
        raise CflowError(f'unknown encoder -enc {c.enc_arch!r}: choose one of {encoder_names_text()}')
    if c.model_type == 'cflow' and c.dec_arch not in DECODER_ARCHS:
        raise CflowError(f'unknown decoder -dec {c.dec_arch!r}: choose one of {", ".join(DECODER_ARCHS)}')
    if c.action_type not in ACTIONS:
        raise CflowError(f'unknown --action-type {c.action_type!r}: choose one of {", ".join(ACTIONS)}')
    if c.action_type != 'norm-train' and not c.checkpoint:
        raise CflowError(f'--action-type {c.action_type} needs --checkpoint FILE')
    if is_exported(c.checkpoint) and c.calibration_path:
        raise CflowError(f'{c.checkpoint} holds the calibration it was exported with: drop --calibration-path, or '
                         f'calibrate the checkpoint and export it again')
    check_action_flags(c)
    check_tiling_flags(c, given)
    check_dataset_flags(c)
    check_counts(c)
    if c.action_type == 'norm-train' and c.checkpoint:
        raise CflowError('--checkpoint is for norm-test (the published code ignores it when training, and a '
                         'warm start would silently restart the schedule): drop --checkpoint, or pass '
                         '--action-type norm-test')
    if c.data_path is None:
        if c.dataset not in DEFAULT_DATA_PATHS:
            raise CflowError(f'--dataset {c.dataset} needs --data-path DIR (the folder holding the class folders)')
        c.data_path = DEFAULT_DATA_PATHS[c.dataset]
    if c.dataset == 'mtd' and c.class_name == 'none':
        c.class_name = 'mtd'  # one class: the tiles
    if c.action_type == 'norm-test':
        c.meta_epochs = 1  # as published: one test pass
    return c


def check_action_flags(c) -> None:
    """Flags that belong to one action (predict's, export's) given to another, or missing where needed."""
    if c.action_type == 'predict' and not c.input:
        raise CflowError('--action-type predict needs --input PATH (an image, a folder or a video)')
    served = ('runtime', 'sensitivity', 'image_threshold', 'pixel_threshold')  # serve takes these too
    predict_only = [flag for flag, dest in (('--runtime', 'runtime'), ('--sensitivity', 'sensitivity'),
                                            ('--streams', 'streams'), ('--openvino-cache', 'openvino_cache'),
                                            ('--image-threshold', 'image_threshold'),
                                            ('--pixel-threshold', 'pixel_threshold'),
                                            ('--fail-on-skip', 'fail_on_skip'))
                    if getattr(c, dest) not in (None, False) and not (c.action_type == 'serve' and dest in served)]
    if predict_only and c.action_type != 'predict':
        raise CflowError(f'{predict_only[0]} is for --action-type predict (it does not change a model file): drop it, '
                         f'or pass --action-type predict')
    if c.action_type == 'predict' and c.streams is not None and c.streams < 1:
        raise CflowError(f'--streams {c.streams}: pass 1 or more (1 = one image at a time on every thread)')
    if c.action_type == 'predict' and c.streams is not None and not is_exported(c.checkpoint):
        raise CflowError('--streams is for an exported .onnx (onnxruntime or OpenVINO): drop it, or export the '
                         'model with --action-type export --output model.onnx')
    if c.action_type in ('predict', 'serve'):
        check_threshold_options(c.image_threshold, c.pixel_threshold, c.sensitivity)
    if c.action_type == 'serve':
        check_serve_flags(c)
    if c.quantize and c.action_type != 'export':
        raise CflowError('--quantize is for --action-type export (it writes an INT8 OpenVINO .xml): drop it, or pass '
                         '--action-type export')
    if c.quantize and not c.calibration_path:
        raise CflowError('--quantize int8 needs --calibration-path DIR: defect-free images (not training ones) for '
                         'its value ranges and its own thresholds')
    if c.quantize and c.output and not c.output.endswith('.xml'):
        raise CflowError(f'--quantize int8 writes an OpenVINO model (.xml + .bin): name --output {c.output} *.xml '
                         f'(e.g. model_int8.xml)')
    if c.action_type == 'export' and not c.output:
        raise CflowError('--action-type export needs --output FILE (model.onnx or model.safetensors)')


def alexnet_fits(side: int) -> bool:
    """Whether AlexNet's features (conv 11/4 pad 2, three 3/2 max-pools) give a map at ``side`` px."""
    n = (side + 4 - 11) // 4 + 1
    for _ in range(3):  # each max-pool (the convolutions between keep the size)
        if n < 3:
            return False
        n = (n - 3) // 2 + 1
    return True


def check_model_flags(c, given: set) -> None:
    """--model: each model's own flags, and DifferNet's published defaults for the size flags left out."""
    if c.model_type not in MODELS:
        raise CflowError(f'unknown --model {c.model_type!r}: choose one of {", ".join(MODELS)}')
    other = CFLOW_ONLY if c.model_type == 'differnet' else DIFFERNET_ONLY
    for flag, dest in other:
        if dest in given:
            owner = 'CFLOW' if c.model_type == 'differnet' else 'DifferNet (--model differnet)'
            raise CflowError(f'{flag} is for {owner}, not --model {c.model_type}: drop it')
    if c.model_type != 'differnet':
        return
    if c.action_type == 'submission':
        raise CflowError('--action-type submission needs anomaly maps of calibrated scale: it is built for CFLOW, '
                         'not --model differnet')
    if c.action_type in ('norm-train', 'norm-test') and c.calibration_path:
        raise CflowError('--calibration-path: DifferNet is calibrated after training, by --action-type calibrate '
                         '--model differnet --checkpoint FILE --calibration-path DIR')
    for key, value in DIFFERNET_DEFAULTS.items():
        if key not in given:
            setattr(c, key, value)
    c.enc_arch, c.dec_arch, c.pool_layers = 'alexnet', 'differnet', 3  # what names its run
    quarter = c.input_size // 4
    if not alexnet_fits(quarter):
        raise CflowError(f'-inp {c.input_size} is too small for DifferNet: its third scale ({quarter} px) gives '
                         f'AlexNet no feature map; pass -inp 252 or more (published: 448)')
    for flag, value in (('--transforms', c.transforms), ('--test-transforms', c.test_transforms),
                        ('--flow-width', c.flow_width)):
        if value < 1:
            raise CflowError(f'{flag} must be at least 1, got {value}')


def check_serve_flags(c) -> None:
    for flag, value in (('--max-batch', c.max_batch), ('--max-queue', c.max_queue), ('--port', c.port)):
        if value < 1:
            raise CflowError(f'{flag} must be at least 1, got {value}')
    for flag, value in (('--max-wait-ms', c.max_wait_ms), ('--max-upload-mb', c.max_upload_mb)):
        if not value >= 0:
            raise CflowError(f'{flag} must be 0 or more, got {value:g}')


def check_dataset_flags(c) -> None:
    """Flags that belong to one dataset (the benchmarks' metrics and files)."""
    if c.action_type == 'submission' and c.dataset != 'mvtec_ad2':
        raise CflowError(f'--action-type submission writes MVTec AD 2\'s server files: pass --dataset mvtec_ad2 '
                         f'(got {c.dataset})')
    if c.pro_limit is not None and c.dataset == 'mvtec':
        raise CflowError('--pro-limit is for the other datasets: MVTec AD keeps the published CFLOW AUPRO (--pro)')
    if c.pro_limit is not None and not 0 < c.pro_limit <= 1:
        raise CflowError(f'--pro-limit {c.pro_limit:g}: pass a false-positive rate in (0, 1], e.g. 0.05 or 0.3')


def check_counts(c) -> None:
    for flag, value in (('-pl/--pool-layers', c.pool_layers), ('-cb/--coupling-blocks', c.coupling_blocks),
                        ('-inp/--input-size', c.input_size), ('-bs/--batch-size', c.batch_size),
                        ('--meta-epochs', c.meta_epochs), ('--sub-epochs', c.sub_epochs),
                        ('--fiber-chunk', c.fiber_chunk), ('--threads', 1 if c.threads is None else c.threads)):
        if value < 1:
            raise CflowError(f'{flag} must be at least 1, got {value}')
    if c.pool_layers > 3:
        raise CflowError(f'-pl/--pool-layers is at most 3, got {c.pool_layers}')


def model_file_request(c) -> Optional[Tuple[str, bool, Optional[str]]]:
    """What to read of the model file, or None when the action reads none (norm-train): (path, whether its
    weights state the architecture (calibrate, predict, export), the -enc given to prefer)."""
    if not c.checkpoint or c.action_type == 'norm-train' or c.model_type == 'differnet':
        return None  # DifferNet's file states its flow's shape itself (custom_models/differnet.py)
    return c.checkpoint, c.action_type in WEIGHTS_STATE_ARCH, c.enc_arch if 'enc_arch' in c.given else None


def derive(c: Settings, stated: Tuple[dict, Optional[dict]] = ({}, None)) -> Settings:
    """The settings the published code derives from the flags checked by ``check_flags``, with what the
    model file states (``stated`` = (settings, calibration), read by the caller: ``actions.read_settings``)
    winning over defaults. Returns them frozen."""
    from utils.images import IMAGENET_MEAN, IMAGENET_STD
    from custom_datasets.stc import STC_MEAN, STC_STD
    from custom_models.encoders import input_size_fits, smallest_input_size
    from custom_models.flows import CLAMP_ALPHA, CONDITION_VEC
    if is_exported(c.checkpoint) and c.action_type not in ('predict', 'submission', 'serve'):
        raise CflowError(f'{c.action_type} needs the model\'s weights (.pt or .safetensors), not the exported graph '
                         f'{c.checkpoint}{precision_note(stated[1])}: pass the checkpoint it was exported from')
    c.norm_mean, c.norm_std = (STC_MEAN, STC_STD) if c.dataset == 'stc' else (IMAGENET_MEAN, IMAGENET_STD)
    c.calibration = stated[1]
    if model_file_request(c) is not None:
        if c.checkpoint.endswith(('.pt', '.pth')):
            check_checkpoint_name(c)
        apply_file_settings(c, stated[0], c.checkpoint)  # the file's settings and calibration win over the defaults
        if stated[1] is not None and 'tile' in c.given and stated[0].get('tile') is None:
            raise CflowError(f'{c.checkpoint} was calibrated on whole images, not tiles: drop --tile, or train and '
                             f'calibrate a model with --tile')
    apply_encoder_input(c, stated[0])
    if c.model_type == 'cflow' and not input_size_fits(c.enc_arch, c.pool_layers, c.input_size):
        raise CflowError(f'-inp {c.input_size} is too small for {c.enc_arch}: its deepest tapped map would be '
                         f'smaller than the network\'s padding; pass -inp '
                         f'{smallest_input_size(c.enc_arch, c.pool_layers)} or more')
    c.img_size = c.crp_size = (c.input_size, c.input_size)
    c.condition_vec, c.clamp_alpha, c.fiber_batch = CONDITION_VEC, CLAMP_ALPHA, FIBER_BATCH
    c.model = model_name(c.dataset, c.enc_arch, c.dec_arch, c.pool_layers, c.coupling_blocks, c.run_input_size,
                         c.run_name, c.class_name)
    if c.seed is None:
        c.seed = c.run_name  # -run 0..3 are four different, reproducible runs
    # The published date with '-' for ':' (file names must work on Windows too).
    c.run_date = datetime.datetime.now().strftime('%Y-%m-%d-%H-%M-%S')
    if c.action_type == 'predict' and 'output_dir' not in c.given:
        c.output_dir = default_predict_dir(c.input)
    c.results_dir = os.path.join(c.output_dir, 'results')
    c.weights_dir = os.path.join(c.output_dir, 'weights')
    c.device = 'cpu' if c.action_type == 'export' else select_device(c)  # exported files are device-free
    c.encoder_source = encoder_weights_choice(c)
    return c.freeze()


def default_predict_dir(input_path: str) -> str:
    """predict's own folder when --output-dir is left out: predictions/<input name>."""
    name = os.path.basename(os.path.normpath(os.path.abspath(input_path))) or 'input'
    return os.path.join('predictions', name)


def apply_process_settings(c) -> None:
    """Process-wide set-up, once, by the entry point: Pillow's decompression-bomb limit, and one arithmetic
    for every action (train, test, calibrate, predict, export): full fp32 unless --tf32 (PyTorch lets cuDNN
    convolutions run in TF32 unless told otherwise, so thresholds and maps would come from other arithmetic
    than training), and --threads."""
    import torch
    Image.MAX_IMAGE_PIXELS = c.max_image_pixels
    torch.backends.cuda.matmul.allow_tf32 = c.tf32
    torch.backends.cudnn.allow_tf32 = c.tf32
    if c.threads is not None:
        torch.set_num_threads(c.threads)


def checked_flags(argv=None) -> Settings:
    """The command line's flags, checked (``check_flags``); --help and a bad flag end here, before any heavy
    import."""
    argv = sys.argv[1:] if argv is None else list(argv)
    return check_flags(build_parser().parse_args(argv), given_flags(argv))


def parse_config(argv=None) -> Settings:
    """argv -> frozen settings, for a command line without a model file to read (this module reads no file:
    with --checkpoint, use ``actions.read_settings``, which reads it once and derives the rest)."""
    c = checked_flags(argv)
    if model_file_request(c) is not None:
        raise CflowError(f'--checkpoint {c.checkpoint}: its model file must be read first: use '
                         f'actions.read_settings(argv) (main.py does)')
    return derive(c)
