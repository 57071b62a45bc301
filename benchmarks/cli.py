"""The bench's command line: its flags, the sections in the order they run, and the printed table."""
import argparse
import os

import torch

from benchmarks import (aupro, differnet, encoders, loader, masks, modes, pipeline, predict, quantize, segmentation,
                        service, sizes, stages, threads, tiling, training)
from benchmarks.rows import table, write_rows
from custom_models.encoders import ENCODER_ARCHS

# name (for --skip) -> the module whose run(a) measures it, in the order they run; the OPT_IN ones (minutes each,
# added after the commands in BENCHMARKS.md were written) run only when --only names them
OPT_IN = ('segmentation', 'service', 'differnet', 'tiling')
SECTIONS = {'pipeline': pipeline, 'aupro': aupro, 'loader': loader, 'predict': predict, 'stages': stages,
            'encoders': encoders, 'sizes': sizes, 'train': training, 'threads': threads, 'masks': masks,
            'quantize': quantize, 'segmentation': segmentation, 'service': service, 'differnet': differnet,
            'tiling': tiling}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description='The benchmark: the published paths against ours, and what users run '
                                            'end to end.')
    p.add_argument('-enc', '--enc-arch', default='wide_resnet50_2', choices=ENCODER_ARCHS,
                   help='encoder of the test-pipeline and predict sections (default: wide_resnet50_2)')
    p.add_argument('-inp', '--input-size', default=256, type=int, help='image side in pixels (default: 256)')
    p.add_argument('-bs', '--batch-size', default=32, type=int, help='test-pipeline images per batch (default: 32)')
    p.add_argument('-cb', '--coupling-blocks', default=8, type=int, help='coupling blocks per flow (default: 8)')
    p.add_argument('-pl', '--pool-layers', default=3, type=int, help='encoder taps, each with a flow (default: 3)')
    p.add_argument('--batches', default=3, type=int, help='batches per path and round')
    p.add_argument('--rounds', default=5, type=int, help='timed rounds (paths interleaved, order rotated)')
    p.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu',
                   help='cpu or cuda[:N] (default: cuda where there is one)')
    p.add_argument('--compile', action='store_true', help='also time torch.compile of the fused scorer')
    p.add_argument('--pro-maps', default=500, type=int, help='AUPRO: number of maps')
    p.add_argument('--pro-size', default=256, type=int, help='AUPRO: map side')
    p.add_argument('--pro-direct-maps', default=None, type=int,
                   help='AUPRO: maps for the direct definition (default: all; it is the slow one)')
    p.add_argument('--loader-images', default=64, type=int, help='loader: image files to read')
    p.add_argument('--loader-image-size', default=1024, type=int, help='loader: side of the PNG files')
    p.add_argument('--workers', default=','.join(str(w) for w in (0, 2, 4) if w <= (os.cpu_count() or 1)),
                   help='loader: worker counts to try (default: 0, 2, 4, up to the cores)')
    p.add_argument('--checkpoint', default='',
                   help='a checkpoint trained on the demo class (README demo command, same -enc/-inp/-cb/-pl): '
                        'also report each fast mode\'s effect on the demo metrics')
    p.add_argument('--predict-images', default=48, type=int, help='predict: image files in the folder')
    p.add_argument('--predict-image-size', default=512, type=int, help='predict: side of the PNG files')
    p.add_argument('--predict-batch', default='1,8', help='predict: images per model call, comma-separated (the '
                   'whole command runs at the first) (default: 1,8)')
    p.add_argument('--train-encoders', default='resnet18,mobilenet_v3_large,wide_resnet50_2',
                   help='training: encoders to time, comma-separated')
    p.add_argument('--train-batch', default=8, type=int,
                   help='training: images per timed batch (steps and encoder time both scale with it, so the '
                        'ratio does not depend on it)')
    p.add_argument('--train-rounds', default=3, type=int, help='training: timed rounds per encoder')
    p.add_argument('--compare-encoders', default='resnet18,vit_base_patch16_224,tf_efficientnet_b5',
                   help='encoders: names timed side by side (norm-test pipeline and predict model) at '
                        '--compare-size, comma-separated')
    p.add_argument('--compare-size', default=224, type=int,
                   help='encoders: input side (224: the one ViT-B/16 size every name here takes) (default: 224)')
    p.add_argument('--compare-images', default=4, type=int, help='encoders: images per path and round (default: 4)')
    p.add_argument('--stage-images', default=48, type=int, help='stages: image files per input size (default: 48)')
    p.add_argument('--stage-rounds', default=3, type=int, help='stages: interleaved rounds of the commands (default: 3)')
    p.add_argument('--stage-sizes', default='512,1024', help='stages: sides of the PNG inputs (default: 512,1024)')
    p.add_argument('--mask-seeds', default='101,102,103',
                   help='masks: data seeds of the demo-style classes (none of them is used by the tests)')
    p.add_argument('--mask-encoder-seeds', default='0,1,2',
                   help='masks: the random-init encoder seed of each of those classes, one per class (default: '
                        '0,1,2)')
    p.add_argument('--quantize-scopes', default='encoder,flows,both',
                   help='predict: INT8 exports timed beside fp32 OpenVINO (comma-separated; empty: none)')
    p.add_argument('--quantize-seeds', default='0,201,202,203',
                   help='quantize: data seeds of the demo-style classes (0: the demo\'s; the others no test uses)')
    add_opt_in_flags(p)
    p.add_argument('--rows-json', default='', metavar='FILE',
                   help='also write the rows as JSON (benchmarks/rows.py: Row) to FILE')
    p.add_argument('--skip', default='', help='comma-separated sections to skip: ' + ','.join(SECTIONS))
    p.add_argument('--only', default='',
                   help='comma-separated sections to run, the others skipped (instead of --skip); '
                   'the sections ' + ' and '.join(OPT_IN) + ' run only when named here')
    return p


def add_opt_in_flags(p) -> None:
    """The flags of the sections that run only when --only names them (OPT_IN)."""
    p.add_argument('--seg-images', default=1000, type=int,
                   help='segmentation: images MVTec AD 2\'s metrics are computed over (default: 1000)')
    p.add_argument('--seg-size', default='2000x1500',
                   help='segmentation: WIDTHxHEIGHT of each map (default: 2000x1500)')
    p.add_argument('--seg-baseline-images', default=20, type=int,
                   help='segmentation: images for the official all-at-once computation beside ours (0: none; '
                        'default: 20, about 4 GB)')
    p.add_argument('--service-images', default=48, type=int, help='service: PNG files sent (default: 48)')
    p.add_argument('--service-image-size', default=512, type=int, help='service: side of the PNG files (default: 512)')
    p.add_argument('--service-rounds', default=3, type=int, help='service: interleaved rounds (default: 3)')
    p.add_argument('--service-runtimes', default='torch,openvino', choices=('torch', 'openvino', 'torch,openvino'),
                   help='service: the runtimes measured (default: torch,openvino)')
    p.add_argument('--service-processes', default=2, type=int,
                   help='service: single-thread processes the 8 clients are spread over beside one process (0: none; '
                        'default: 2)')
    p.add_argument('--differnet-images', default=4, type=int,
                   help='differnet: test images (64 views each) per path and round (default: 4)')
    p.add_argument('--differnet-meta-epochs', default=4, type=int,
                   help='differnet: meta epochs of the demo-class runs of both models (default: 4)')
    p.add_argument('--differnet-mtd', default=1, type=int,
                   help='differnet: also compare the models on MTD-style tiles (761 training images; 0: skip)')
    p.add_argument('--tiling-seeds', default='101,102',
                   help='tiling: data seeds of the held-out 1,024 px classes (default: 101,102; empty: none)')
    p.add_argument('--tiling-epochs', default='2x2', help='tiling: META x SUB epochs of the held-out runs (default: 2x2)')
    p.add_argument('--tiling-speed', default=1, type=int, help='tiling: also measure speed and memory (0: skip)')
    p.add_argument('--tiling-rounds', default=3, type=int, help='tiling: interleaved rounds of the speed cases')
    p.add_argument('--tiling-threads', default=2, type=int, help='tiling: torch threads of each speed case')


def chosen_sections(a) -> list:
    skip, only = (set(v.split(',')) - {''} for v in (a.skip, a.only))
    if skip and only:
        raise SystemExit('--skip and --only together: pass one of them')
    for flag, names in (('--skip', skip), ('--only', only)):
        unknown = names - set(SECTIONS)
        if unknown:
            raise SystemExit(f'{flag} names no section {", ".join(sorted(unknown))}: choose from {", ".join(SECTIONS)}')
    skip = set(SECTIONS) - only if only else skip | set(OPT_IN)
    chosen = [m for name, m in SECTIONS.items() if name not in skip and (name != 'threads' or a.device == 'cpu')]
    return chosen + ([modes] if a.checkpoint else [])


def main(argv=None):
    a = build_parser().parse_args(argv)
    device_name = torch.cuda.get_device_name(a.device) if a.device.startswith('cuda') else \
        f'CPU, {torch.get_num_threads()} threads'
    print(f'device: {device_name}; torch {torch.__version__}; -enc {a.enc_arch} -inp {a.input_size} '
          f'-bs {a.batch_size} -cb {a.coupling_blocks} -pl {a.pool_layers}; {a.batches} batches per path and round, '
          f'{a.rounds} rounds, paths interleaved in rotated order; speeds: median [min-max] over rounds')
    rows = [row for section in chosen_sections(a) for row in section.run(a)]
    print('\n' + table(rows))
    if a.rows_json:
        write_rows(a.rows_json, rows)
    return rows
