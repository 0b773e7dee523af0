"""Checkpoints of a 'fine-tuned' model without training: for tests and benchmarks.

The model of a config is built with its pretrained backbone, every trainable backbone tensor
(adapter cores and factors, ``trainable`` norms) is moved off its initial value and the heads
keep their fresh initialisation, so the adapters really change the output. Saved as the runner
saves (``meta.dataset_meta``, ``state_dict``), in full or adapter-only form
(:func:`flora_mm.engine.checkpoint.strip_frozen`, what ``AdapterCheckpointHook`` writes).
"""
import copy
from typing import Optional

import torch


def make_checkpoint(config, path: str, cfg_options: Optional[dict] = None,
                    adapter_only: bool = False, seed: int = 0, std: float = 0.05) -> dict:
    """Write a checkpoint of ``config``'s model with perturbed adapters; return it.

    Args:
        config: Config file or loaded Config (its ``model.backbone.pretrained`` is the base).
        path: Output file.
        cfg_options: Config overrides.
        adapter_only: Drop the frozen weights, as ``adapter_only_checkpoint=True`` does.
        seed: Seeds the heads' initialisation and the adapter perturbation.
        std: Standard deviation of the Gaussian added to each trainable backbone tensor.
    """
    from mmengine.registry import DATASETS

    from flora_mm.adapters import atomic_write
    from flora_mm.apis.launch import build_model, load_config
    from flora_mm.engine.checkpoint import strip_frozen
    cfg = load_config(config, cfg_options=cfg_options) if isinstance(config, str) else config
    torch.manual_seed(seed)
    model = build_model(cfg)
    model.init_weights()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.backbone.parameters():
            if param.requires_grad:
                param.add_(torch.randn(param.shape, generator=generator) * std)
    dataset = copy.deepcopy(cfg.test_dataloader.dataset)
    dataset['lazy_init'] = True
    checkpoint = dict(meta=dict(dataset_meta=DATASETS.build(dataset).metainfo),
                      state_dict={k: v.detach().clone() for k, v in model.state_dict().items()})
    if adapter_only:
        strip_frozen(checkpoint, model)
    atomic_write(path, lambda tmp: torch.save(checkpoint, tmp))
    return checkpoint


__all__ = ['make_checkpoint']
