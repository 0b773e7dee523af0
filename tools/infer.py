"""Predict images with a flora_mm checkpoint (full or adapter-only); draw them and write JSON.

    python tools/infer.py CONFIG CHECKPOINT IMAGE [IMAGE ...] --out-dir DIR
    python tools/infer.py CONFIG CHECKPOINT --test-set 4 --out-dir DIR   # first 4 test images

mmdet's DetInferencer (Mask R-CNN), mmseg's MMSegInferencer (UperNet) or, for mmrotate configs,
DetInferencer with mmrotate's RotLocalVisualizer, picked by the config's ``default_scope``.
Writes DIR/vis/<image name> (predictions drawn) and DIR/preds/<image stem>.json. An adapter-only
checkpoint takes its frozen base from ``model.backbone.pretrained`` (set it with
``--cfg-options model.backbone.pretrained=PATH`` where the config has none).
"""
import argparse
import json

from mmengine.config import DictAction

from flora_mm.apis.inference import infer, test_set_images


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('config', help='config file')
    parser.add_argument('checkpoint', help='checkpoint file (full or adapter-only)')
    parser.add_argument('images', nargs='*', help='image files')
    parser.add_argument('--test-set', type=int, metavar='N',
                        help='also predict the first N images of the config\'s test set')
    parser.add_argument('--out-dir', required=True, help='output directory')
    parser.add_argument('--device', default='cpu', help='torch device, e.g. cuda:0')
    parser.add_argument('--score-thr', type=float, default=0.3,
                        help='detections below this score are not drawn (the JSON has all)')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config settings, key=value')
    args = parser.parse_args(argv)
    if not args.images and not args.test_set:
        parser.error('give IMAGES or --test-set N')
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    images = list(args.images)
    if args.test_set:
        images += test_set_images(args.config, args.test_set, args.cfg_options)
    records = infer(args.config, args.checkpoint, images, args.out_dir, args.device,
                    args.score_thr, args.cfg_options)
    for record in records:
        pred = record['prediction']
        what = (f'{len(pred["labels"])} detections' if 'labels' in pred else
                f'classes {sorted(pred["pixels"])}')
        print(json.dumps(dict(image=record['image'], vis=record['vis'], json=record['json'],
                              summary=what)))


if __name__ == '__main__':
    main()
