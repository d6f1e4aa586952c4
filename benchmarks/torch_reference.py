r"""PyTorch reference of the SPP-ResNet train step (CPU or CUDA), for a fair speed comparison.

The same network as `spp_resnet.models.create_model(config.model, ...)`, written here in
plain PyTorch (torchvision is not installable in this environment):

  * ResNet-18/34/50/101/152 in torchvision's layout ('v1.5': stride on the 3x3 conv,
    conv without bias, BatchNorm eps 1e-5 / momentum 0.1) or Keras' ('v1': stride on the
    first 1x1 conv, conv with bias, eps 1.001e-5 / momentum 0.01), kaiming fan_out init;
  * SPP: `F.adaptive_max_pool2d` per level, each level flattened bins-major
    ([B, n, n, C] order, as the JAX model) and concatenated;
  * FC head: Linear -> ReLU -> Dropout per hidden layer, N(0, 0.01^2) init, zero bias,
    one logit + sigmoid BCE for two classes (softmax CE otherwise);
  * SGD momentum 0.9, coupled weight decay 5e-4 on kernels only (ndim > 1, as
    `spp_resnet.training.optimizer`), the config's learning rate.

A train step does what the JAX step does: uint8 [B,S,S,1] -> float [0,1] -> 3 channels,
random per-example rot90/flips (D4, via torch.where), forward, loss, backward, update.
The synthetic batch lives on the device (as in benchmarks/train_step.py); the random
D4 bits are drawn on the device each step.

Options:
  --device      cpu | cuda (default: cuda when torch.cuda.is_available()). On CUDA the
                timed loops are bracketed by torch.cuda.synchronize() (steps are queued
                back to back, as the JAX benchmark dispatches them), peak memory is
                torch.cuda.max_memory_allocated and the device name is reported; on CPU
                torch is synchronous and peak memory is the host's peak RSS.
  --dtype       float32 | bfloat16. bfloat16 = torch.autocast(device, torch.bfloat16)
                around forward + loss with float32 parameters and optimizer, the logits
                cast to float32 before the loss: as the JAX model's
                compute_dtype='bfloat16'.
  --compile     torch.compile (default mode, or --compile_mode). --compile_scope=model
                compiles the model (forward; AOTAutograd gives its backward);
                --compile_scope=step compiles input conversion + augmentation + forward +
                loss as one function and the optimizer step as another. Compiling
                happens in the first (warm-up) steps: their excess over the steady step
                time is reported as the compile time, apart from the timed steps
                (use --warmup >= 3). If torch.compile fails (on CPU it needs a working
                C++ compiler), the script says so and exits with status 3 (with --json:
                a JSON line with an "error" key).
  --tf32, --cudnn_benchmark  CUDA only, both on by default (JAX/XLA on a GPU uses TF32
                for float32 convolutions and matmuls by default and autotunes its
                convolutions).

  python benchmarks/torch_reference.py --config=configs/default.py \
      --config.model.variant=v1.5 --batch_size=32 --image_size=224 --steps=5 --warmup=2
  python benchmarks/torch_reference.py --config=configs/default.py \
      --config.model.variant=v1.5 --batch_size=256 --image_size=224 --steps=50 \
      --warmup=5 --device=cuda --dtype=bfloat16 --channels_last --compile

`--json` prints one JSON line (used by benchmarks/compare_torch.py and
scripts/gpu_speed.sh).
"""

from __future__ import annotations

import json
import os
import platform
import resource
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from absl import app, flags
from ml_collections import config_flags
from torch import nn

_CONFIG = config_flags.DEFINE_config_file('config', 'configs/default.py',
                                          'Config file (its `model` and `optimizer`).')
_BATCH = flags.DEFINE_integer('batch_size', 32, 'Batch size.')
_IMAGE = flags.DEFINE_integer('image_size', 224, 'Square input size.')
_NUM_CLASSES = flags.DEFINE_integer('num_classes', 2, 'Classes (2 = one sigmoid logit).')
_STEPS = flags.DEFINE_integer('steps', 5, 'Timed train steps.')
_WARMUP = flags.DEFINE_integer('warmup', 2, 'Untimed warm-up steps.')
_EVAL_STEPS = flags.DEFINE_integer('eval_steps', -1, 'Timed eval steps (-1: = steps).')
_THREADS = flags.DEFINE_integer('threads', 0, 'torch.set_num_threads (0: cores available).')
_CHANNELS_LAST = flags.DEFINE_bool('channels_last', False, 'NHWC memory format.')
_DEVICE = flags.DEFINE_enum('device', None, ['cpu', 'cuda'],
                            'Device (default: cuda if torch.cuda.is_available() else cpu).')
_DTYPE = flags.DEFINE_enum('dtype', 'float32', ['float32', 'bfloat16'],
                           'Compute dtype: bfloat16 = autocast around forward + loss, '
                           'float32 parameters and optimizer.')
_COMPILE = flags.DEFINE_bool('compile', False, 'torch.compile the model / step.')
_COMPILE_MODE = flags.DEFINE_enum(
    'compile_mode', 'default',
    ['default', 'reduce-overhead', 'max-autotune', 'max-autotune-no-cudagraphs'],
    'torch.compile mode.')
_COMPILE_SCOPE = flags.DEFINE_enum(
    'compile_scope', 'model', ['model', 'step'],
    'model: torch.compile(model); step: input conversion + augmentation + forward + loss '
    'compiled as one function, the optimizer step as another.')
_TF32 = flags.DEFINE_bool('tf32', True, 'CUDA: allow TF32 in float32 convs and matmuls.')
_CUDNN_BENCHMARK = flags.DEFINE_bool('cudnn_benchmark', True,
                                     'CUDA: torch.backends.cudnn.benchmark (autotuning).')
_JSON = flags.DEFINE_bool('json', False, 'Print one JSON line instead of a table.')

SPECS = {18: ('basic', (2, 2, 2, 2)), 34: ('basic', (3, 4, 6, 3)),
         50: ('bottleneck', (3, 4, 6, 3)), 101: ('bottleneck', (3, 4, 23, 3)),
         152: ('bottleneck', (3, 8, 36, 3))}


class _Layers:
  def __init__(self, variant: str):
    self.v1 = variant == 'v1'

  def conv(self, cin, cout, k, stride=1):
    return nn.Conv2d(cin, cout, k, stride, padding=(k - 1) // 2, bias=self.v1)

  def bn(self, c):
    return nn.BatchNorm2d(c, eps=1.001e-5 if self.v1 else 1e-5,
                          momentum=0.01 if self.v1 else 0.1)


class BasicBlock(nn.Module):
  expansion = 1

  def __init__(self, cin, width, stride, layers: _Layers):
    super().__init__()
    self.conv1, self.bn1 = layers.conv(cin, width, 3, stride), layers.bn(width)
    self.conv2, self.bn2 = layers.conv(width, width, 3), layers.bn(width)
    self.proj = None
    if stride != 1 or cin != width:
      self.proj = nn.Sequential(layers.conv(cin, width, 1, stride), layers.bn(width))

  def forward(self, x):
    y = F.relu(self.bn1(self.conv1(x)))
    y = self.bn2(self.conv2(y))
    return F.relu((x if self.proj is None else self.proj(x)) + y)


class Bottleneck(nn.Module):
  expansion = 4

  def __init__(self, cin, width, stride, layers: _Layers):
    super().__init__()
    s1, s3 = (stride, 1) if layers.v1 else (1, stride)
    cout = width * 4
    self.conv1, self.bn1 = layers.conv(cin, width, 1, s1), layers.bn(width)
    self.conv2, self.bn2 = layers.conv(width, width, 3, s3), layers.bn(width)
    self.conv3, self.bn3 = layers.conv(width, cout, 1), layers.bn(cout)
    self.proj = None
    if stride != 1 or cin != cout:
      self.proj = nn.Sequential(layers.conv(cin, cout, 1, stride), layers.bn(cout))

  def forward(self, x):
    y = F.relu(self.bn1(self.conv1(x)))
    y = F.relu(self.bn2(self.conv2(y)))
    y = self.bn3(self.conv3(y))
    return F.relu((x if self.proj is None else self.proj(x)) + y)


class ResNet(nn.Module):
  def __init__(self, depth: int, variant: str = 'v1.5'):
    super().__init__()
    kind, sizes = SPECS[depth]
    block = Bottleneck if kind == 'bottleneck' else BasicBlock
    layers = _Layers(variant)
    self.stem = nn.Sequential(layers.conv(3, 64, 7, 2), layers.bn(64), nn.ReLU(),
                              nn.MaxPool2d(3, 2, 1))
    cin, stages = 64, []
    for i, (n, width) in enumerate(zip(sizes, (64, 128, 256, 512))):
      blocks = []
      for j in range(n):
        blocks.append(block(cin, width, 2 if i > 0 and j == 0 else 1, layers))
        cin = width * block.expansion
      stages.append(nn.Sequential(*blocks))
    self.stages = nn.Sequential(*stages)
    self.num_features = cin
    for m in self.modules():
      if isinstance(m, nn.Conv2d):
        nn.init.kaiming_normal_(m.weight, mode='fan_out', nonlinearity='relu')
        if m.bias is not None:
          nn.init.zeros_(m.bias)

  def forward(self, x):
    return self.stages(self.stem(x))


def spp(x: torch.Tensor, levels) -> torch.Tensor:
  """[B, C, H, W] -> [B, C * sum(n^2)], bins-major per level (as the JAX model)."""
  return torch.cat([F.adaptive_max_pool2d(x, n).permute(0, 2, 3, 1).flatten(1)
                    for n in levels], dim=1)


class Classifier(nn.Module):
  def __init__(self, model_config, num_classes: int):
    super().__init__()
    m = model_config
    if m.pooling != 'spp' or m.spp_mode != 'max' or m.spp_channels:
      raise ValueError('torch reference implements pooling=spp, spp_mode=max, '
                       'spp_channels=0 only')
    self.backbone = ResNet(int(m.backbone.removeprefix('resnet')), m.variant)
    self.levels = tuple(m.spp_levels)
    features = self.backbone.num_features * sum(n * n for n in self.levels)
    dense = []
    for width in (*m.head_hidden, 1 if num_classes == 2 else num_classes):
      layer = nn.Linear(features, width)
      nn.init.normal_(layer.weight, std=m.head_init_std)
      nn.init.zeros_(layer.bias)
      dense.append(layer)
      features = width
    self.dense = nn.ModuleList(dense)
    self.dropout = nn.Dropout(m.dropout)

  def forward(self, x):
    h = spp(self.backbone(x), self.levels)
    for layer in self.dense[:-1]:
      h = self.dropout(F.relu(layer(h)))
    return self.dense[-1](h)


def to_model_input(images_u8: torch.Tensor, channels_last: bool) -> torch.Tensor:
  """uint8 [B,H,W,1] -> float32 [B,3,H,W] in [0, 1] ('none' normalization)."""
  x = images_u8.float().mul_(1.0 / 255.0).expand(-1, -1, -1, 3)
  x = x.permute(0, 3, 1, 2)
  return x.contiguous(memory_format=torch.channels_last if channels_last
                      else torch.contiguous_format)


def draw_d4(batch: int, gen: torch.Generator) -> tuple[torch.Tensor, ...]:
  """Per-example random bits (transpose, row flip, column flip), on gen's device."""
  return tuple(torch.randint(0, 2, (batch, 1, 1, 1), generator=gen,
                             device=gen.device).bool() for _ in range(3))


def apply_d4(x: torch.Tensor, t, r, c) -> torch.Tensor:
  """Per-example transpose / row flip / column flip (the D4 group), [B,C,H,W]."""
  x = torch.where(t, x.transpose(2, 3), x)
  x = torch.where(r, x.flip(2), x)
  return torch.where(c, x.flip(3), x)


def augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
  """Random per-example transpose / row flip / column flip (the D4 group), [B,C,H,W]."""
  return apply_d4(x, *draw_d4(x.shape[0], gen))


def loss_fn(logits, labels):
  if logits.shape[-1] == 1:
    return F.binary_cross_entropy_with_logits(logits[:, 0], labels.float())
  return F.cross_entropy(logits, labels)


def make_optimizer(model: nn.Module, opt_config):
  if opt_config.name != 'sgd' or opt_config.weight_decay_type != 'coupled':
    raise ValueError('torch reference implements SGD with coupled weight decay only')
  decay = [p for p in model.parameters() if p.ndim > 1]
  no_decay = [p for p in model.parameters() if p.ndim <= 1]
  return torch.optim.SGD(
      [{'params': decay, 'weight_decay': opt_config.weight_decay},
       {'params': no_decay, 'weight_decay': 0.0}],
      lr=opt_config.learning_rate, momentum=opt_config.momentum,
      nesterov=opt_config.nesterov)


def num_params(model: nn.Module) -> int:
  return sum(p.numel() for p in model.parameters())


def peak_rss_mib() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


class CompileError(RuntimeError):
  """torch.compile failed (its message says why; on CPU often the C++ toolchain)."""


def _graphs_compiled() -> int:
  """Graphs dynamo has compiled so far in this process (best effort; -1 if unknown)."""
  try:
    from torch._dynamo.utils import counters  # pylint: disable=import-outside-toplevel
    return int(counters['stats']['unique_graphs'])
  except Exception:  # pylint: disable=broad-except
    return -1


def run(config, *, batch_size, image_size, num_classes, steps, warmup, eval_steps,
        threads, channels_last, device=None, dtype='float32', compile=False,  # pylint: disable=redefined-builtin
        compile_mode='default', compile_scope='model', tf32=True,
        cudnn_benchmark=True) -> dict:
  device = device or ('cuda' if torch.cuda.is_available() else 'cpu')
  cuda = device == 'cuda'
  if cuda and not torch.cuda.is_available():
    raise ValueError('--device=cuda but torch.cuda.is_available() is False')
  threads = threads or len(os.sched_getaffinity(0))
  torch.set_num_threads(threads)
  if cuda:
    if hasattr(torch.backends.cudnn, 'conv') and hasattr(torch.backends.cudnn.conv,
                                                           'fp32_precision'):  # torch >= 2.9
      precision = 'tf32' if tf32 else 'ieee'
      torch.backends.cuda.matmul.fp32_precision = precision
      torch.backends.cudnn.conv.fp32_precision = precision
    else:
      torch.backends.cuda.matmul.allow_tf32 = tf32
      torch.backends.cudnn.allow_tf32 = tf32
    torch.backends.cudnn.benchmark = cudnn_benchmark
  torch.manual_seed(config.seed)
  model = Classifier(config.model, num_classes)
  fmt = torch.channels_last if channels_last else torch.contiguous_format
  model = model.to(device=device, memory_format=fmt)
  opt = make_optimizer(model, config.optimizer)
  rng = np.random.default_rng(0)
  images = torch.from_numpy(
      rng.integers(0, 256, (batch_size, image_size, image_size, 1), dtype=np.uint8)).to(device)
  labels = torch.from_numpy(
      rng.integers(0, num_classes, (batch_size,)).astype(np.int64)).to(device)
  gen = torch.Generator(device=device).manual_seed(0)
  bf16 = dtype == 'bfloat16'

  def autocast():
    return torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=bf16)

  def sync():
    if cuda:
      torch.cuda.synchronize()

  compile_kw = {} if compile_mode == 'default' else {'mode': compile_mode}
  net = torch.compile(model, **compile_kw) if compile and compile_scope == 'model' else model

  def forward_loss(images, labels, t, r, c):
    x = apply_d4(to_model_input(images, channels_last), t, r, c)
    with autocast():
      logits = net(x)
    return loss_fn(logits.float(), labels)  # float32 logits and loss, as the JAX model

  def forward_eval(images):
    with autocast():
      return net(to_model_input(images, channels_last)).float()

  opt_step = opt.step
  if compile and compile_scope == 'step':
    forward_loss = torch.compile(forward_loss, **compile_kw)
    forward_eval = torch.compile(forward_eval, **compile_kw)
    opt_step = torch.compile(lambda: opt.step(), **compile_kw)  # pylint: disable=unnecessary-lambda

  cudagraphs = compile and compile_mode == 'reduce-overhead'

  def train_step():
    if cudagraphs:  # a new iteration: the last one's graph outputs may be overwritten
      torch.compiler.cudagraph_mark_step_begin()
    loss = forward_loss(images, labels, *draw_d4(batch_size, gen))
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt_step()
    return loss

  @torch.no_grad()
  def eval_step():
    return forward_eval(images)

  def guarded(fn):  # the first calls compile: report a failure as such
    if not compile:
      return fn()
    try:
      return fn()
    except Exception as e:  # pylint: disable=broad-except
      raise CompileError(f'torch.compile (mode {compile_mode}, scope {compile_scope}) '
                         f'failed on {device}: {type(e).__name__}: {e}') from e

  if cuda:
    torch.cuda.reset_peak_memory_stats()
  model.train()
  warm_times = []
  for _ in range(max(1, warmup)):  # the first steps compile (torch.compile, cudnn autotune)
    t0 = time.perf_counter()
    guarded(train_step)
    sync()
    warm_times.append(time.perf_counter() - t0)
  graphs_before = _graphs_compiled()
  sync()
  c0, t0 = time.process_time(), time.perf_counter()
  for _ in range(steps):
    loss = train_step()
  sync()
  train_s, train_cpu_s = time.perf_counter() - t0, time.process_time() - c0
  step_s = train_s / steps
  loss = float(loss.detach())
  train_recompiles = (_graphs_compiled() - graphs_before) if graphs_before >= 0 else -1

  model.eval()
  eval_steps = steps if eval_steps < 0 else eval_steps
  eval_warm = []
  for _ in range(max(1, warmup)):
    t0 = time.perf_counter()
    guarded(eval_step)
    sync()
    eval_warm.append(time.perf_counter() - t0)
  sync()
  t0 = time.perf_counter()
  for _ in range(eval_steps):
    eval_step()
  sync()
  eval_s = time.perf_counter() - t0
  eval_step_s = eval_s / eval_steps if eval_steps else float('nan')

  if cuda:
    peak, peak_kind = torch.cuda.max_memory_allocated() / 2**20, 'cuda max_memory_allocated'
    device_name = torch.cuda.get_device_name()
    devices = f'cuda: {device_name}'
  else:
    peak, peak_kind = peak_rss_mib(), 'host peak RSS'
    device_name = platform.processor() or platform.machine()
    devices = f'cpu x{threads} threads'
  # Time the warm-up steps took beyond steady-state steps: compiling (torch.compile,
  # cudnn autotuning, lazy init). Reported as the compile time when compiled.
  warm_excess = max(0.0, sum(warm_times) - len(warm_times) * step_s)
  eval_excess = (max(0.0, sum(eval_warm) - len(eval_warm) * eval_step_s)
                 if eval_steps else float('nan'))
  m = config.model
  return {
      'framework': f'torch {torch.__version__}' + (' compile' if compile else ''),
      'backbone': m.backbone, 'variant': m.variant, 'pooling': m.pooling,
      'spp_levels': list(m.spp_levels), 'head_hidden': list(m.head_hidden),
      'image_size': image_size, 'batch_size': batch_size, 'dtype': dtype,
      'devices': devices, 'device': device, 'platform': device, 'device_name': device_name,
      'threads': threads,
      'params': num_params(model), 'steps': steps, 'warmup': warmup,
      'eval_steps': eval_steps,
      'compiled': compile, 'compile_mode': compile_mode if compile else '',
      'compile_scope': compile_scope if compile else '',
      'compile_train_s': warm_excess if compile else 0.0,
      'compile_eval_s': eval_excess if compile else 0.0,
      'warmup_step_s': warm_times, 'warmup_excess_train_s': warm_excess,
      'warmup_excess_eval_s': eval_excess,
      'recompiles_in_timed_loop': train_recompiles if compile else 0,
      'first_step_s': warm_times[0],
      'train_step_ms': 1e3 * step_s,
      'train_images_per_s': batch_size * steps / train_s,
      'train_cpu_s_per_step': train_cpu_s / steps,
      'eval_step_ms': 1e3 * eval_step_s,
      'eval_images_per_s': batch_size * eval_steps / eval_s if eval_steps else float('nan'),
      'peak_memory_mib': peak, 'peak_memory_kind': peak_kind,
      'final_loss': loss, 'channels_last': channels_last,
      'tf32': tf32 if cuda else None, 'cudnn_benchmark': cudnn_benchmark if cuda else None,
  }


def format_table(r: dict) -> str:
  rows = [
      ('framework', r['framework']),
      ('model', f"{r['backbone']} {r['variant']} + {r['pooling']} {r['spp_levels']} "
                f"+ head {r['head_hidden']}"),
      ('params', f"{r['params']:,}"),
      ('image size', r['image_size']), ('batch', r['batch_size']), ('dtype', r['dtype']),
      ('device', r['devices']),
      ('threads', r['threads']), ('memory format',
                                  'channels_last' if r['channels_last'] else 'NCHW'),
      ('torch.compile', f"mode {r['compile_mode']}, scope {r['compile_scope']}"
                        if r['compiled'] else 'no (eager)'),
  ]
  if r['compiled']:
    rows.append(('compile s (train / eval; warm-up excess)',
                 f"{r['compile_train_s']:.1f} / {r['compile_eval_s']:.1f}"))
    rows.append(('graphs compiled in timed loop', r['recompiles_in_timed_loop']))
  rows += [
      ('first step s', f"{r['first_step_s']:.2f}"),
      (f"train step ms (mean of {r['steps']})", f"{r['train_step_ms']:.1f}"),
      ('train images/s', f"{r['train_images_per_s']:.1f}"),
      ('train CPU s/step (all threads)', f"{r['train_cpu_s_per_step']:.2f}"),
      ('eval images/s', f"{r['eval_images_per_s']:.1f}"),
      (f"peak memory MiB ({r['peak_memory_kind']})", f"{r['peak_memory_mib']:.0f}"),
  ]
  width = max(len(k) for k, _ in rows)
  return '\n'.join(f'{k:<{width}}  {v}' for k, v in rows)


def main(argv):
  del argv
  try:
    result = run(_CONFIG.value, batch_size=_BATCH.value, image_size=_IMAGE.value,
                 num_classes=_NUM_CLASSES.value, steps=_STEPS.value, warmup=_WARMUP.value,
                 eval_steps=_EVAL_STEPS.value, threads=_THREADS.value,
                 channels_last=_CHANNELS_LAST.value, device=_DEVICE.value,
                 dtype=_DTYPE.value, compile=_COMPILE.value,
                 compile_mode=_COMPILE_MODE.value, compile_scope=_COMPILE_SCOPE.value,
                 tf32=_TF32.value, cudnn_benchmark=_CUDNN_BENCHMARK.value)
  except CompileError as e:
    message = str(e).strip()
    print(f'ERROR: {message.splitlines()[0][:2000]}', file=sys.stderr)
    if _JSON.value:
      print(json.dumps({'error': message[:4000], 'compiled': True,
                        'compile_mode': _COMPILE_MODE.value,
                        'compile_scope': _COMPILE_SCOPE.value,
                        'framework': f'torch {torch.__version__} compile',
                        'dtype': _DTYPE.value, 'batch_size': _BATCH.value,
                        'image_size': _IMAGE.value}))
    sys.exit(3)
  result['python'] = platform.python_version()
  if _JSON.value:
    print(json.dumps(result))
  else:
    print(format_table(result))


if __name__ == '__main__':
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  app.run(main)
