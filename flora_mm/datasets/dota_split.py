"""Split raw DOTA images into the fixed-size patches mmrotate's ``DOTADataset`` reads.

This drives mmrotate's own splitter, ``tools/data/dota/split/img_split.py``, which the pip
package ships under ``mmrotate/.mim/`` without the ``split_configs/*.json`` its documentation
names; the presets below are those files' values for DOTA-v1.0. Semantics (DOTA devkit):
windows of ``size / rate`` pixels every ``(size - gap) / rate`` pixels, the last one flush with
the image border; windows covering less than ``img_rate_thr`` of their area with image are
dropped (the best one is kept for small images) and padded with ``padding_value``; an object
goes into every window holding at least ``iof_thr`` of its polygon area, with coordinates
relative to the window, its own difficulty when whole and difficulty ``2`` when truncated.
Patches are named ``<image>__<window size>__<x>___<y>.png`` with one ``annfiles/*.txt``
(``x1 y1 ... x4 y4 class difficulty`` per line) each, which is also what the metric's
``merge_patches`` parses to put test predictions back into full-image coordinates.
"""
import functools
import importlib.util
import multiprocessing
import os
import os.path as osp
import shutil
import sys
from types import ModuleType
from typing import Dict, Optional, Sequence

# mmrotate's split_configs/dota1_0/{ss,ms}_*.json
PRESETS = {
    'ss': dict(sizes=(1024, ), gaps=(200, ), rates=(1.0, )),
    'ms': dict(sizes=(1024, ), gaps=(500, ), rates=(0.5, 1.0, 1.5)),
}
DEFAULTS = dict(img_rate_thr=0.6, iof_thr=0.7, padding_value=(104, 116, 124), save_ext='.png')
_MODULE = 'mmrotate_img_split'


def img_split_module() -> ModuleType:
    """mmrotate's ``img_split.py`` as a module (from the installed package or a source tree)."""
    if _MODULE in sys.modules:
        return sys.modules[_MODULE]
    from ..stack import require
    require('mmrotate', part="the DOTA splitter (mmrotate's img_split.py)")
    import mmrotate
    package = osp.dirname(mmrotate.__file__)
    candidates = [osp.join(package, '.mim', 'tools', 'data', 'dota', 'split', 'img_split.py'),
                  osp.join(osp.dirname(package), 'tools', 'data', 'dota', 'split',
                           'img_split.py')]
    path = next((p for p in candidates if osp.isfile(p)), None)
    if path is None:
        raise FileNotFoundError(f"mmrotate's DOTA splitter is not installed: none of "
                                f'{candidates} exists')
    spec = importlib.util.spec_from_file_location(_MODULE, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    sys.modules[_MODULE] = module
    return module


def _split_job(job: tuple, out_dir: str, sizes: Sequence[int], gaps: Sequence[int],
               img_rate_thr: float, iof_thr: float, padding_value: Sequence[int],
               save_ext: str) -> list:
    """Crop one raw image (``job = (info, img_dir)``) into its patches and annfiles."""
    info, img_dir = job
    split = img_split_module()
    windows = split.get_sliding_window(info, list(sizes), list(gaps), img_rate_thr)
    window_anns = split.get_window_obj(info, windows, iof_thr)
    return split.crop_and_save_img(info, windows, window_anns, img_dir, False,
                                   list(padding_value), osp.join(out_dir, 'images'),
                                   osp.join(out_dir, 'annfiles'), save_ext)


def split_dota(img_dirs: Sequence[str],
               ann_dirs: Optional[Sequence[Optional[str]]],
               out_dir: str,
               preset: str = 'ss',
               nproc: int = 1,
               **overrides) -> Dict[str, int]:
    """Split the images of ``img_dirs`` (labels from ``ann_dirs``) into ``out_dir``.

    ``out_dir/images/*.png`` and ``out_dir/annfiles/*.txt`` are written into a temporary
    folder next to ``out_dir`` and renamed when complete, so an interrupted run leaves no
    half-split set behind.

    Args:
        img_dirs: Folders of raw DOTA images (e.g. ``data/DOTA/train/images``); several are
            merged (``trainval``).
        ann_dirs: The matching ``labelTxt`` folders (DOTA-v1.0 txt: optional
            ``imagesource:`` / ``gsd:`` header lines, then ``x1 y1 ... x4 y4 class
            difficulty``), or None for unlabelled images (the test set): empty annfiles.
        out_dir: Output folder; must not exist.
        preset: ``'ss'`` (single scale: 1024 px, gap 200) or ``'ms'`` (multi-scale: 1024 px,
            gap 500, rates 0.5 / 1.0 / 1.5).
        nproc: Worker processes.
        **overrides: ``sizes``, ``gaps``, ``rates``, ``img_rate_thr``, ``iof_thr``,
            ``padding_value``, ``save_ext`` replacing the preset's values.

    Returns:
        ``{'images': raw images, 'patches': patches written, 'objects': objects in the raw
        labels, 'patch_objects': object lines written (an object in several windows counts
        once per window)}``.

    Raises:
        ValueError: Unknown preset or override, mismatched ``ann_dirs``, bad sizes / gaps.
        FileExistsError: ``out_dir`` exists.
        FileNotFoundError: A folder of ``img_dirs`` / ``ann_dirs`` does not exist.
    """
    if preset not in PRESETS:
        raise ValueError(f'preset={preset!r} is not one of {sorted(PRESETS)}')
    params = {**PRESETS[preset], **DEFAULTS}
    unknown = sorted(set(overrides) - set(params))
    if unknown:
        raise ValueError(f'unknown split options {unknown}; allowed: {sorted(params)}')
    params.update(overrides)
    ann_dirs = list(ann_dirs) if ann_dirs is not None else [None] * len(img_dirs)
    if len(ann_dirs) != len(img_dirs):
        raise ValueError(f'{len(img_dirs)} image folders but {len(ann_dirs)} annotation '
                         'folders')
    for folder in list(img_dirs) + [d for d in ann_dirs if d is not None]:
        if not osp.isdir(folder):
            raise FileNotFoundError(f'{folder!r} is not a folder')
    if len(params['sizes']) != len(params['gaps']):
        raise ValueError(f"sizes={params['sizes']} and gaps={params['gaps']} differ in length")
    if any(gap >= size for size, gap in zip(params['sizes'], params['gaps'])):
        raise ValueError(f"every gap must be smaller than its size: sizes={params['sizes']}, "
                         f"gaps={params['gaps']}")
    if osp.exists(out_dir):
        raise FileExistsError(f'{out_dir!r} exists; remove it or choose another output folder')
    # as mmrotate's img_split: a rate scales the window and the gap, not the image
    sizes = [int(s / r) for r in params['rates'] for s in params['sizes']]
    gaps = [int(g / r) for r in params['rates'] for g in params['gaps']]

    split = img_split_module()
    tmp_dir = f'{out_dir.rstrip(os.sep)}.tmp-{os.getpid()}'
    os.makedirs(osp.join(tmp_dir, 'images'))
    os.makedirs(osp.join(tmp_dir, 'annfiles'))
    try:
        jobs = []
        for img_dir, ann_dir in zip(img_dirs, ann_dirs):
            infos = split.load_dota(img_dir=img_dir, ann_dir=ann_dir, nproc=1)
            jobs += [(info, img_dir) for info in sorted(infos, key=lambda i: i['id'])]
        worker = functools.partial(
            _split_job, out_dir=tmp_dir, sizes=sizes, gaps=gaps,
            img_rate_thr=params['img_rate_thr'], iof_thr=params['iof_thr'],
            padding_value=params['padding_value'], save_ext=params['save_ext'])
        if nproc > 1:
            with multiprocessing.Pool(nproc) as pool:
                patches = pool.map(worker, jobs)
        else:
            patches = list(map(worker, jobs))
        os.rename(tmp_dir, out_dir)
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise
    return dict(images=len(jobs), patches=sum(len(p) for p in patches),
                objects=sum(len(info['ann']['bboxes']) for info, _ in jobs),
                patch_objects=sum(len(p['ann']['bboxes']) for ps in patches for p in ps))

