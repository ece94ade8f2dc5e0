"""configs/{segvit,dtop}/README.md and metafile.yaml agree with the configs they list."""
import re
from pathlib import Path

import pytest
import yaml
from mmengine.config import Config

ROOT = Path(__file__).resolve().parents[2]
FOLDERS = ('segvit', 'dtop')


def _leaves(folder):
    """The SegViT-based configs of a folder (configs/dtop also holds prune configs of
    other decode heads, which have their own model-zoo entries)."""
    pattern = 'segvit_*.py' if folder == 'segvit' else 'dtop_segvit_*.py'
    return sorted((ROOT / 'configs' / folder).glob(pattern))


def _meta(folder):
    with open(ROOT / 'configs' / folder / 'metafile.yaml') as f:
        return yaml.safe_load(f)


@pytest.mark.parametrize('folder', FOLDERS)
def test_metafile_lists_every_config_once(folder):
    meta = _meta(folder)
    (collection,) = meta['Collections']
    assert (ROOT / collection['README']).is_file()
    configs = [m['Config'] for m in meta['Models']]
    assert sorted(configs) == sorted(f'configs/{folder}/{p.name}' for p in _leaves(folder))
    for m in meta['Models']:
        assert m['Name'] == Path(m['Config']).stem
        assert m['In Collection'] == collection['Name']


@pytest.mark.parametrize('folder', FOLDERS)
def test_metafile_metadata_matches_the_resolved_config(folder):
    for m in _meta(folder)['Models']:
        cfg = Config.fromfile(str(ROOT / m['Config']), import_custom_modules=False)
        md = m['Metadata']
        assert md['Iterations'] == cfg.train_cfg.max_iters, m['Name']
        crop = tuple(cfg.model.data_preprocessor.size)
        assert md['Crop Size'] == f'({crop[0]},{crop[1]})', m['Name']
        assert md['Batch Size'] == 4 * cfg.train_dataloader.batch_size  # 4 GPUs
        arch = 'ViT-B' if cfg.model.backbone.embed_dims == 768 else 'ViT-L'
        assert arch in md['Architecture']
        if folder == 'dtop':
            assert md['Prune Threshold'] == cfg.model.prune_threshold
            assert md['Keep Top-k Per Class'] == cfg.model.keep_topk_per_class
            assert (ROOT / 'configs/segvit' / f"{md['Fine-tuned From']}.py").is_file()


@pytest.mark.parametrize('folder', FOLDERS)
def test_readme_table_links_existing_configs_with_the_metafile_numbers(folder):
    text = (ROOT / 'configs' / folder / 'README.md').read_text()
    links = re.findall(r'\[config\]\(([^)]+)\)', text)
    for link in links:
        assert (ROOT / 'configs' / folder / link).resolve().is_file(), link
    for m in _meta(folder)['Models']:
        name = Path(m['Config']).name
        row = next(line for line in text.splitlines() if f'[config]({name})' in line)
        cells = [c.strip() for c in row.strip('|').split('|')]
        assert str(m['Results']['Metrics']['mIoU']) in cells, (name, cells)
        assert str(m['Metadata']['FLOPs (G)']) in cells, (name, cells)


def test_targets_agree_with_the_main_readme():
    """The top-level README's results table is the source the metafiles copy."""
    readme = (ROOT / 'README.md').read_text()
    for folder, col in (('segvit', 4), ('dtop', 6)):
        for m in _meta(folder)['Models']:
            name = Path(m['Config']).stem
            row = next(line for line in readme.splitlines() if f'[{name}]' in line)
            cells = [c.strip() for c in row.strip('|').split('|')]
            miou, gflops = cells[col].split(' / ')
            assert float(miou) == m['Results']['Metrics']['mIoU'], name
            assert float(gflops) == m['Metadata']['FLOPs (G)'], name
