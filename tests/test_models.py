"""Architecture tests: parameter counts, shapes, SPP against a NumPy reference."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from spp_resnet.models import Classifier, ResNet, spatial_pyramid_pool
from spp_resnet.models import ops
from spp_resnet.models import spp as spp_lib


def num_params(module) -> int:
  return sum(x.size for x in jax.tree.leaves(nnx.state(module, nnx.Param)))


@pytest.mark.parametrize('depth,variant,expected', [
    # torchvision resnet50 without fc: 25,557,032 - 2048 * 1000 - 1000.
    (50, 'v1.5', 23_508_032),
    # keras.applications.ResNet50(include_top=False): 23,534,592 trainable (conv biases).
    (50, 'v1', 23_534_592),
    (18, 'v1.5', 11_176_512),   # torchvision resnet18: 11,689,512 - 513,000
    (34, 'v1.5', 21_284_672),   # torchvision resnet34: 21,797,672 - 513,000
    (101, 'v1.5', 42_500_160),  # torchvision resnet101: 44,549,160 - 2,049,000
    (152, 'v1.5', 58_143_808),  # torchvision resnet152: 60,192,808 - 2,049,000
])
def test_parameter_counts(depth, variant, expected):
  model = nnx.eval_shape(lambda: ResNet(depth, variant, rngs=nnx.Rngs(0)))
  assert num_params(model) == expected


def test_stride_placement():
  """v1 strides the first 1x1 conv of a downsampling bottleneck, v1.5 the 3x3 conv."""
  v1 = nnx.eval_shape(lambda: ResNet(50, 'v1', rngs=nnx.Rngs(0)))
  v15 = nnx.eval_shape(lambda: ResNet(50, 'v1.5', rngs=nnx.Rngs(0)))
  assert v1.stages[1][0].conv1.strides == (2, 2) and v1.stages[1][0].conv2.strides == (1, 1)
  assert v15.stages[1][0].conv1.strides == (1, 1) and v15.stages[1][0].conv2.strides == (2, 2)
  assert v1.stem_bn.epsilon == 1.001e-5 and v15.stem_bn.epsilon == 1e-5
  assert v1.stem_conv.use_bias and not v15.stem_conv.use_bias


@pytest.mark.parametrize('size, kernel, stride', [
    (1, 3, 1), (2, 3, 1), (2, 3, 2), (3, 7, 2), (5, 7, 2), (8, 3, 1)])
@pytest.mark.slow
def test_conv_on_maps_smaller_than_the_kernel_is_the_same_convolution(size, kernel, stride):
  """The patches @ kernel path (maps smaller than the kernel) equals lax's conv, with
  its gradients; larger maps go to lax unchanged."""
  rng = np.random.default_rng(size * 100 + kernel)
  x = jnp.asarray(rng.normal(size=(3, size, size + 1, 5)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(kernel, kernel, 5, 4)), jnp.float32)
  pad = (kernel - 1) // 2
  args = ((stride, stride), ((pad, pad), (pad, pad)))
  dn = ('NHWC', 'HWIO', 'NHWC')

  def ours(x, w):
    return ops.conv_general_dilated(x, w, *args, dimension_numbers=dn, precision='highest')

  def reference(x, w):
    return jax.lax.conv_general_dilated(x, w, *args, dimension_numbers=dn,
                                        precision='highest')

  np.testing.assert_allclose(ours(x, w), reference(x, w), rtol=1e-5, atol=1e-5)
  grad = lambda f: jax.grad(lambda x, w: jnp.sum(jnp.sin(f(x, w))), argnums=(0, 1))(x, w)
  for a, b in zip(grad(ours), grad(reference)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_resnet_feature_shapes():
  model = ResNet(18, 'v1.5', rngs=nnx.Rngs(0))
  outs = model.stage_outputs(jnp.zeros((1, 96, 64, 3)), train=False)
  assert outs['stem'].shape == (1, 24, 16, 64)
  assert outs['stage4'].shape == (1, 3, 2, 512)


def spp_reference(x: np.ndarray, levels, mode) -> np.ndarray:
  """Loop-by-bin SPP with torch's adaptive-pooling bin edges."""
  batch, height, width, channels = x.shape
  out = []
  for n in levels:
    level = np.zeros((batch, n, n, channels), x.dtype)
    for i in range(n):
      r0, r1 = int(np.floor(i * height / n)), int(np.ceil((i + 1) * height / n))
      for j in range(n):
        c0, c1 = int(np.floor(j * width / n)), int(np.ceil((j + 1) * width / n))
        window = x[:, r0:r1, c0:c1, :]
        level[:, i, j] = window.max(axis=(1, 2)) if mode == 'max' else window.mean(axis=(1, 2))
    out.append(level.reshape(batch, -1))
  return np.concatenate(out, axis=1)


@pytest.mark.parametrize('shape', [(2, 7, 7, 5), (1, 8, 8, 3), (2, 3, 5, 4), (1, 1, 1, 2),
                                   (1, 13, 9, 2)])
@pytest.mark.parametrize('mode', ['max', 'avg'])
def test_spp_matches_numpy_reference(shape, mode):
  x = np.random.default_rng(0).normal(size=shape).astype(np.float32)
  levels = (1, 4, 8)
  got = jax.jit(lambda x: spatial_pyramid_pool(x, levels, mode))(x)
  np.testing.assert_allclose(np.asarray(got), spp_reference(x, levels, mode),
                             rtol=1e-6, atol=1e-6)


def test_spp_bins_cover_small_maps():
  # 7 positions into 8 bins: every bin non-empty, the whole axis covered.
  edges = spp_lib.bin_edges(7, 8)
  assert all(stop > start for start, stop in edges)
  assert edges[0][0] == 0 and edges[-1][1] == 7


@pytest.mark.slow
def test_classifier_output_length_independent_of_input_size():
  backbone = ResNet(18, 'v1.5', rngs=nnx.Rngs(0))
  model = Classifier(backbone, num_classes=2, head_hidden=(8, 8), rngs=nnx.Rngs(1))
  assert model.dense[0].in_features == 512 * 81
  pooled = [model.pool(backbone(jnp.zeros((1, h, w, 3)), train=False)).shape
            for h, w in [(224, 224), (256, 256), (224, 160), (64, 64)]]
  assert all(p == (1, 512 * 81) for p in pooled)
  assert model(jnp.zeros((2, 96, 80, 3)), train=False).shape == (2, 1)


@pytest.mark.slow
def test_classifier_head_init_and_outputs():
  backbone = ResNet(18, 'v1.5', rngs=nnx.Rngs(0))
  model = Classifier(backbone, num_classes=4, pooling='gap', head_hidden=(256, 128),
                     head_init_std=0.01, rngs=nnx.Rngs(1))
  kernel = np.asarray(model.dense[0].kernel[...])
  assert abs(kernel.std() - 0.01) < 0.001 and abs(kernel.mean()) < 0.001
  assert not np.asarray(model.dense[0].bias[...]).any()
  assert [d.out_features for d in model.dense] == [256, 128, 4]
  x = jax.random.normal(jax.random.key(0), (2, 64, 64, 3))
  # Dropout is active in training only.
  a = model(x, train=True, rngs=nnx.Rngs(dropout=0), batch_norm_train=False)
  b = model(x, train=True, rngs=nnx.Rngs(dropout=1), batch_norm_train=False)
  c = model(x, train=False)
  assert not np.allclose(a, b)
  np.testing.assert_allclose(c, model(x, train=False))


@pytest.mark.slow
def test_bfloat16_compute_keeps_float32_params():
  model = ResNet(18, 'v1.5', dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
  assert model(jnp.zeros((1, 64, 64, 3)), train=False).dtype == jnp.bfloat16


@pytest.mark.slow
def test_bfloat16_classifier_gives_distinct_float32_logits():
  backbone = ResNet(18, 'v1.5', dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
  model = Classifier(backbone, num_classes=2, head_hidden=(16,), dtype=jnp.bfloat16,
                     spp_levels=(1, 2), rngs=nnx.Rngs(1))
  x = jax.random.uniform(jax.random.key(0), (256, 32, 32, 3))
  logits = model(x, train=False)
  assert logits.dtype == jnp.float32
  # bf16 has 8 significant bits: a bf16 output layer gives many ties among 256 logits.
  assert len(np.unique(np.asarray(logits))) == 256


@pytest.mark.slow
def test_frozen_stages_use_and_keep_running_statistics():
  model = ResNet(18, 'v1.5', rngs=nnx.Rngs(0))
  before = jax.tree.map(np.array, nnx.state(model, nnx.BatchStat))
  x = jax.random.normal(jax.random.key(1), (4, 64, 64, 3))
  inference = model.stage_outputs(x, train=False)
  trained = model.stage_outputs(x, train=True, frozen_stages=2)  # stem and stage1
  after = nnx.state(model, nnx.BatchStat)
  flat_before = dict(jax.tree_util.tree_flatten_with_path(before)[0])
  for path, value in jax.tree_util.tree_flatten_with_path(after)[0]:
    name = jax.tree_util.keystr(path)
    frozen = name.startswith(("['stem_bn']", "['stages'][0]"))
    same = np.array_equal(np.asarray(value), flat_before[path])
    assert same == frozen, name
  # Frozen parts compute exactly what they compute at inference.
  for key in ('stem', 'stage1'):
    np.testing.assert_array_equal(trained[key], inference[key])
  assert not np.allclose(trained['stage2'], inference['stage2'])


def test_frozen_stage_count_matches_the_frozen_parameters():
  from spp_resnet.training import train
  model = ResNet(18, 'v1.5', rngs=nnx.Rngs(0))
  for up_to, count in (('none', 0), ('stem', 1), ('stage1', 2), ('stage4', 5), ('all', 5)):
    assert train.frozen_stage_count(up_to) == count
    frozen = train.frozen_filter(up_to)
    params = nnx.state(model, nnx.Param)
    names = {('backbone',) + tuple(p) for p, _ in jax.tree_util.tree_flatten_with_path(
        params)[0] for p in [tuple(getattr(k, 'key', getattr(k, 'idx', k)) for k in p)]}
    stages = {int(n[2]) for n in names if n[1] == 'stages' and frozen(n, None)}
    stem = any(str(n[1]).startswith('stem') and frozen(n, None) for n in names)
    assert stem == (count >= 1) and stages == set(range(max(0, count - 1)))


# IBN-Net (Pan et al., 2018), parameter counts as its layouts imply: 'a' splits
# BatchNorms into an instance and a batch half, both affine, so it keeps ResNet's count;
# 'b' adds the affine instance norms after stages 1-2's last residual sum (2 x channels).
@pytest.mark.parametrize('depth,ibn,expected', [
    (18, 'a', 11_176_512), (18, 'b', 11_176_512 + 2 * (64 + 128)),
    (50, 'a', 23_508_032), (50, 'b', 23_508_032 + 2 * (256 + 512)),
])
def test_ibn_parameter_counts(depth, ibn, expected):
  model = nnx.eval_shape(lambda: ResNet(depth, 'v1.5', ibn=ibn, rngs=nnx.Rngs(0)))
  assert num_params(model) == expected


def test_ibn_layouts_follow_ibn_net():
  from spp_resnet.models import resnet
  a = nnx.eval_shape(lambda: ResNet(50, 'v1.5', ibn='a', rngs=nnx.Rngs(0)))
  b = nnx.eval_shape(lambda: ResNet(50, 'v1.5', ibn='b', rngs=nnx.Rngs(0)))
  mixed = [[isinstance(block.bn1, resnet.InstanceBatchNorm) for block in stage]
           for stage in a.stages]
  assert mixed == [[True] * 3, [True] * 4, [True] * 6, [False] * 3]
  assert a.stages[0][0].bn1.split == 32 and isinstance(a.stem_bn, nnx.BatchNorm)
  after_sum = [[block.sum_norm is not None for block in stage] for stage in b.stages]
  assert after_sum == [[False, False, True], [False] * 3 + [True], [False] * 6, [False] * 3]
  assert isinstance(b.stem_bn, resnet.InstanceNorm)
  assert all(block.sum_norm is None for stage in a.stages for block in stage)
  with pytest.raises(ValueError, match="ibn .* must be '', 'a' or 'b'"):
    ResNet(18, 'v1.5', ibn='c', rngs=nnx.Rngs(0))


def test_instance_batch_norm_normalizes_half_per_image_half_per_batch():
  from spp_resnet.models import resnet
  layers = resnet._Layers('v1.5', None, nnx.Rngs(0))
  norm = resnet.InstanceBatchNorm(6, layers)
  x = np.asarray(jax.random.normal(jax.random.key(0), (4, 5, 5, 6))) * 3 + 1
  y = np.asarray(norm(jnp.asarray(x), use_running_average=False))

  def normalize(v, axes):
    return (v - v.mean(axes, keepdims=True)) / np.sqrt(v.var(axes, keepdims=True) + 1e-5)

  np.testing.assert_allclose(y[..., :3], normalize(x[..., :3], (1, 2)), atol=1e-4)
  np.testing.assert_allclose(y[..., 3:], normalize(x[..., 3:], (0, 1, 2)), atol=1e-4)
  # The instance half ignores an image's own brightness and contrast; the batch half not.
  x2 = x.copy()
  x2[0] = 5 * x2[0] + 2
  y2 = np.asarray(norm(jnp.asarray(x2), use_running_average=False))
  np.testing.assert_allclose(y2[..., :3], y[..., :3], atol=1e-4)
  assert not np.allclose(y2[1:, ..., 3:], y[1:, ..., 3:], atol=1e-2)


def test_ibn_b_stem_ignores_each_images_contrast():
  """The instance-normalized stem (v1.5: convolutions without bias) maps an image and the
  same image at 4x the contrast to the same activations (up to the epsilon in the
  variance); BatchNorm's stem does not."""
  x = jax.random.uniform(jax.random.key(1), (2, 64, 64, 3))
  brighter = x.at[0].multiply(4.0)
  for ibn, invariant in (('b', True), ('', False)):
    model = ResNet(18, 'v1.5', ibn=ibn, rngs=nnx.Rngs(0))
    same = np.allclose(model.stem(x, train=True), model.stem(brighter, train=True),
                       atol=1e-2)
    assert same == invariant, ibn
