"""Fast tests of tools/train.py, tools/test.py and dtop.utils.launch (no training)."""
import importlib.util
import os

import pytest
import torch
import torch.distributed as dist
from mmengine.config import Config
from mmengine.registry import MODEL_WRAPPERS
from mmseg.registry import MODELS

from _tiny_runs import BASE_CONFIG, PRUNE_CONFIG, ROOT, free_port
from tests.utils.tiny_models import tiny_model_cfg
from dtop.utils.launch import configure_cpu_ddp, init_cpu_process_group, prepare_distributed


def _load_tool(name):
    spec = importlib.util.spec_from_file_location(f'dtop_tools_{name}',
                                                  ROOT / 'tools' / f'{name}.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


train_tool = _load_tool('train')
test_tool = _load_tool('test')


# ----------------------------------------------------------------- train.py
def test_train_config_defaults():
    cfg = train_tool.build_config(train_tool.parse_args([str(BASE_CONFIG)]))
    assert cfg.work_dir == os.path.join('./work_dirs', BASE_CONFIG.stem)
    assert cfg.resume is False and cfg.launcher == 'none'
    assert cfg.optim_wrapper.type == 'OptimWrapper'


def test_train_cli_overrides(tmp_path):
    ckpt = tmp_path / 'base.pth'
    ckpt.write_bytes(b'')
    args = train_tool.parse_args([str(PRUNE_CONFIG), '--work-dir', str(tmp_path / 'w'),
                                  '--resume', '--cfg-options', 'train_cfg.max_iters=7',
                                  f'load_from={ckpt}'])
    cfg = train_tool.build_config(args)
    assert cfg.work_dir == str(tmp_path / 'w')
    assert cfg.resume is True
    assert cfg.train_cfg.max_iters == 7
    assert cfg.load_from == str(ckpt)


def test_train_missing_files_fail_early(tmp_path):
    with pytest.raises(FileNotFoundError, match='config file not found: nope.py'):
        train_tool.build_config(train_tool.parse_args(['nope.py']))
    args = train_tool.parse_args([str(PRUNE_CONFIG), '--cfg-options',
                                  f'load_from={tmp_path}/missing.pth'])
    with pytest.raises(FileNotFoundError, match='load_from checkpoint not found'):
        train_tool.build_config(args)


@pytest.mark.skipif(torch.cuda.is_available(), reason='tests the CPU error')
def test_train_amp_needs_cuda():
    with pytest.raises(RuntimeError, match='--amp needs a CUDA device'):
        train_tool.build_config(train_tool.parse_args([str(BASE_CONFIG), '--amp']))


def test_train_amp_switches_optim_wrapper(monkeypatch):
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    cfg = train_tool.build_config(train_tool.parse_args([str(BASE_CONFIG), '--amp']))
    assert cfg.optim_wrapper.type == 'AmpOptimWrapper'
    assert cfg.optim_wrapper.loss_scale == 'dynamic'
    # paramwise settings survive the switch
    assert cfg.optim_wrapper.paramwise_cfg.custom_keys['head']['lr_mult'] == 10.0


def test_train_warns_for_prune_config_without_base_checkpoint(monkeypatch):
    logged = []
    monkeypatch.setattr(train_tool, 'print_log',
                        lambda msg, logger=None, level=20: logged.append((level, msg)))
    train_tool.build_config(train_tool.parse_args([str(PRUNE_CONFIG)]))
    assert any(level == 30 and 'no load_from is set' in msg for level, msg in logged)
    logged.clear()
    train_tool.build_config(train_tool.parse_args([str(BASE_CONFIG)]))
    train_tool.build_config(train_tool.parse_args([str(PRUNE_CONFIG), '--resume']))
    assert not any('no load_from is set' in msg for _, msg in logged)


# ------------------------------------------------------------------ test.py
def test_test_cli(tmp_path):
    ckpt = tmp_path / 'model.pth'
    ckpt.write_bytes(b'')
    args = test_tool.parse_args([str(PRUNE_CONFIG), str(ckpt), '--out', str(tmp_path / 'o'),
                                 '--show-dir', str(tmp_path / 's'),
                                 '--cfg-options', 'model.prune_threshold=0.5'])
    cfg = test_tool.build_config(args)
    assert cfg.load_from == str(ckpt) and cfg.resume is False
    assert cfg.model.prune_threshold == 0.5
    assert cfg.test_evaluator['output_dir'] == str(tmp_path / 'o')
    assert cfg.default_hooks.visualization.draw is True
    assert cfg.default_hooks.visualization.interval == 1
    assert cfg.visualizer.save_dir == str(tmp_path / 's')
    # --show-interval N paints every N-th image; 0 is refused
    base = [str(PRUNE_CONFIG), str(ckpt), '--show-dir', str(tmp_path / 's')]
    args = test_tool.parse_args(base + ['--show-interval', '10'])
    assert test_tool.build_config(args).default_hooks.visualization.interval == 10
    with pytest.raises(ValueError, match='--show-interval'):
        test_tool.build_config(test_tool.parse_args(base + ['--show-interval', '0']))


def test_test_tta_swaps_model_and_pipeline(tmp_path):
    ckpt = tmp_path / 'model.pth'
    ckpt.write_bytes(b'')
    cfg = test_tool.build_config(test_tool.parse_args([str(BASE_CONFIG), str(ckpt), '--tta']))
    assert cfg.model.type == 'DToPTTAModel'  # keeps every pass's dtop_stats
    assert cfg.model.module.type == 'DToPEncoderDecoder'
    assert cfg.test_dataloader.dataset.pipeline[1].type == 'TestTimeAug'


def test_test_missing_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError, match='checkpoint not found'):
        test_tool.build_config(test_tool.parse_args([str(BASE_CONFIG),
                                                     str(tmp_path / 'x.pth')]))


# ---------------------------------------------------------- dtop.utils.launch
def test_prepare_distributed_leaves_gpu_and_single_process_runs_alone():
    cfg = Config.fromfile(str(BASE_CONFIG))
    before = cfg.to_dict()
    prepare_distributed(cfg, 'none', cuda_available=False)
    prepare_distributed(cfg, 'pytorch', cuda_available=True)
    prepare_distributed(cfg, 'slurm', cuda_available=True)
    assert cfg.to_dict() == before


def test_prepare_distributed_rejects_bad_launchers():
    cfg = Config.fromfile(str(BASE_CONFIG))
    with pytest.raises(ValueError, match="one of .* got 'local'"):
        prepare_distributed(cfg, 'local')
    with pytest.raises(ValueError, match='--launcher mpi needs CUDA devices'):
        prepare_distributed(cfg, 'mpi', cuda_available=False)


def test_configure_cpu_ddp():
    cfg = Config.fromfile(str(BASE_CONFIG))
    configure_cpu_ddp(cfg)
    assert cfg.env_cfg.dist_cfg.backend == 'gloo'
    # find_unused_parameters = None in the runtime base: DToPRunner decides it from
    # the model (tests/test_tools/test_ddp_find_unused.py)
    assert cfg.model_wrapper_cfg == dict(type='MMDistributedDataParallel', device_ids=None)
    cfg = Config(dict(find_unused_parameters=True))
    configure_cpu_ddp(cfg)
    assert cfg.model_wrapper_cfg.find_unused_parameters is True
    cfg = Config(dict(model_wrapper_cfg=dict(type='MMFullyShardedDataParallel',
                                             device_ids=[0], find_unused_parameters=False)))
    configure_cpu_ddp(cfg)
    assert cfg.model_wrapper_cfg == dict(type='MMFullyShardedDataParallel', device_ids=None,
                                         find_unused_parameters=False)


def test_init_cpu_process_group_needs_torchrun_env(monkeypatch):
    if dist.is_initialized():
        pytest.skip('a process group already exists in this process')
    for key in ('RANK', 'WORLD_SIZE', 'MASTER_ADDR', 'MASTER_PORT'):
        monkeypatch.delenv(key, raising=False)
    with pytest.raises(RuntimeError, match='needs the torchrun environment'):
        init_cpu_process_group()


def test_cpu_ddp_wraps_a_dtop_model(monkeypatch):
    """The failure mode of environment-notes.md: on CPU, the wrapper that the
    Runner builds from our config must accept a CPU module (device_ids=None)."""
    if dist.is_initialized():
        pytest.skip('a process group already exists in this process')
    monkeypatch.setenv('RANK', '0')
    monkeypatch.setenv('WORLD_SIZE', '1')
    monkeypatch.setenv('LOCAL_RANK', '0')
    monkeypatch.setenv('MASTER_ADDR', '127.0.0.1')
    monkeypatch.setenv('MASTER_PORT', str(free_port()))
    cfg = Config(dict(find_unused_parameters=True, env_cfg=dict(dist_cfg=dict(backend='nccl'))))
    try:
        prepare_distributed(cfg, 'pytorch', cuda_available=False)
        assert dist.is_initialized() and dist.get_backend() == 'gloo'
        model = MODELS.build(tiny_model_cfg())
        # what mmengine's Runner.wrap_model does with a model_wrapper_cfg
        wrapped = MODEL_WRAPPERS.build(dict(cfg.model_wrapper_cfg),
                                       default_args=dict(module=model, device_ids=[0]))
        assert wrapped.device_ids is None
        assert wrapped.find_unused_parameters is True
        out = wrapped(torch.randn(1, 3, 64, 64), mode='tensor')
        assert out.shape == (1, 5, 64, 64)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
