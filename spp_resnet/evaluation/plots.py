"""PNG figures: ROC curves, confusion matrices and training curves.

Figures are built with matplotlib's object API (`Figure`, no pyplot), which renders
with Agg without touching the global backend or pyplot's figure registry, so it is
safe in headless jobs and leaks no figures.
"""

from collections.abc import Mapping, Sequence
import os

from matplotlib.figure import Figure
import numpy as np


def _save(fig: Figure, path: str | os.PathLike) -> None:
  directory = os.path.dirname(os.fspath(path))
  if directory:
    os.makedirs(directory, exist_ok=True)
  fig.savefig(path, format='png', dpi=120, bbox_inches='tight')


def plot_roc(curves: Mapping[str, tuple[np.ndarray, np.ndarray, float]],
             path: str | os.PathLike,
             title: str = 'ROC') -> None:
  """ROC curves, one per name -> (fpr, tpr, auc), e.g. from `metrics.roc_curve`."""
  fig = Figure(figsize=(5, 5))
  ax = fig.subplots()
  for name, (fpr, tpr, auc) in curves.items():
    ax.plot(fpr, tpr, lw=1.5, label=f'{name} (AUC = {auc:.3f})')
  ax.plot([0, 1], [0, 1], ls='--', color='gray', lw=1, label='chance')
  ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel='False positive rate (1 - specificity)',
         ylabel='True positive rate (sensitivity)', title=title, aspect='equal')
  ax.grid(alpha=0.3)
  ax.legend(loc='lower right', fontsize='small')
  _save(fig, path)


def plot_confusion(confusion: np.ndarray,
                   class_names: Sequence[str],
                   path: str | os.PathLike,
                   normalize: bool = False,
                   title: str = 'Confusion matrix') -> None:
  """Heat map with counts in each cell; `normalize` divides each row by its total
  (so the diagonal shows per-class recall; empty rows stay 0)."""
  confusion = np.asarray(confusion)
  num_classes = confusion.shape[0]
  if len(class_names) != num_classes:
    raise ValueError(f'{len(class_names)} class names for {num_classes} classes')
  values = confusion.astype(np.float64)
  if normalize:
    row_totals = values.sum(axis=1, keepdims=True)
    values = np.divide(values, row_totals, out=np.zeros_like(values), where=row_totals > 0)

  size = 2.0 + 0.9 * num_classes
  fig = Figure(figsize=(size + 1.0, size))
  ax = fig.subplots()
  image = ax.imshow(values, cmap='Blues', vmin=0.0, vmax=1.0 if normalize else None)
  fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
  threshold = (values.max() or 1.0) / 2.0  # white text on dark cells
  for i in range(num_classes):
    for j in range(num_classes):
      text = f'{values[i, j]:.2f}' if normalize else f'{int(confusion[i, j])}'
      ax.text(j, i, text, ha='center', va='center',
              color='white' if values[i, j] > threshold else 'black')
  ticks = np.arange(num_classes)
  ax.set_xticks(ticks, class_names, rotation=45, ha='right')
  ax.set_yticks(ticks, class_names)
  ax.set(xlabel='Predicted', ylabel='True', title=title)
  _save(fig, path)


def plot_image_rows(rows: Mapping[str, Sequence[tuple[np.ndarray, str]]],
                    path: str | os.PathLike, title: str = '') -> None:
  """Rows of gray thumbnails, each with a caption: name -> [(image [H, W(, 1)], caption)].
  Rows may differ in length (an empty row shows its name only)."""
  width = max([len(images) for images in rows.values()] + [1])
  heights = [2.1 if images else 0.3 for images in rows.values()]  # an empty row: its name
  fig = Figure(figsize=(1.6 * width, sum(heights) + 0.4), layout='constrained')
  if title:
    fig.suptitle(title, fontsize=10)
  subfigs = np.ravel(fig.subfigures(len(rows), 1, height_ratios=heights))
  for subfig, (name, images) in zip(subfigs, rows.items()):
    subfig.suptitle(name if images else f'{name}: none', fontsize=8, x=0.01, ha='left')
    if not images:
      continue
    for c, ax in enumerate(np.ravel(subfig.subplots(1, width, squeeze=False))):
      ax.set_axis_off()
      if c < len(images):
        image, caption = images[c]
        ax.imshow(np.asarray(image).squeeze(), cmap='gray', vmin=0, vmax=255)
        ax.set_title(caption, fontsize=6)
  _save(fig, path)


def plot_training_curves(history: Sequence[Mapping[str, float]],
                         path: str | os.PathLike,
                         metrics: Sequence[str] = ('loss', 'accuracy')) -> None:
  """One panel per metric, one line per split ('train/loss', 'test/loss', ...),
  against 'epoch'. Rows without a key are skipped, so train and eval rows logged
  separately (e.g. by `writers.read_metrics`) plot together."""
  panels = {metric: {} for metric in metrics}  # metric -> split -> [(epoch, value)]
  for row in history:
    if 'epoch' not in row:
      continue
    for key, value in row.items():
      split, slash, metric = key.partition('/')
      if slash and metric in panels:
        panels[metric].setdefault(split, []).append((row['epoch'], value))
  panels = {metric: lines for metric, lines in panels.items() if lines}
  if not panels:
    raise ValueError(f'history has none of the metrics {list(metrics)}')

  fig = Figure(figsize=(4.5 * len(panels), 3.5))
  axes = np.atleast_1d(fig.subplots(1, len(panels)))
  for ax, (metric, lines) in zip(axes, panels.items()):
    for split, points in sorted(lines.items()):
      epochs, values = zip(*sorted(points))
      ax.plot(epochs, values, marker='o' if len(points) < 30 else None, ms=3, label=split)
    ax.set(xlabel='epoch', title=metric)
    ax.grid(alpha=0.3)
    ax.legend(fontsize='small')
  fig.tight_layout()
  _save(fig, path)


def plot_sweep(panels: Mapping[str, Mapping[str, Sequence[tuple]]],
               path: str | os.PathLike,
               xlabel: str,
               ylabel: str,
               title: str = '',
               log_x: bool = False,
               highlight: object = None) -> None:
  """A metric against a swept value: one panel per split ('validation', 'test'), one
  line per name -> [(x, mean, low, high)], error bars from low to high (none where nan).

  Numeric x values are placed on a (log, with `log_x`) axis; other values (strings,
  tuples) at evenly spaced positions in order of appearance. `highlight` = (line name,
  x) circles that point in every panel (e.g. the one selected on validation).
  """
  xs = [x for lines in panels.values() for points in lines.values() for x, *_ in points]
  numeric = all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in xs)
  positions, tick_labels = {}, []  # categorical values: repr -> position
  if not numeric:
    for x in xs:
      if repr(x) not in positions:
        positions[repr(x)] = len(positions)
        tick_labels.append(str(x))

  def pos(x):
    return x if numeric else positions[repr(x)]

  fig = Figure(figsize=(4.5 * len(panels), 3.6))
  axes = np.atleast_1d(fig.subplots(1, len(panels), sharey=True))
  for ax, (panel, lines) in zip(axes, panels.items()):
    for name, points in lines.items():
      points = sorted(points, key=lambda p: pos(p[0]))
      x = np.array([pos(p[0]) for p in points], np.float64)
      mean = np.array([p[1] for p in points], np.float64)
      low = np.array([p[2] for p in points], np.float64)
      high = np.array([p[3] for p in points], np.float64)
      yerr = np.nan_to_num(np.stack([mean - low, high - mean]), nan=0.0)
      ax.errorbar(x, mean, yerr=np.maximum(yerr, 0.0), marker='o', ms=4, capsize=3,
                  label=name or None)
      if highlight is not None and highlight[0] == name:
        for p, m in zip(points, mean):
          if p[0] == highlight[1]:
            ax.plot([pos(p[0])], [m], marker='o', ms=12, mfc='none', mec='red', mew=1.5,
                    ls='none', label='selected on validation')
    if log_x:
      ax.set_xscale('log')
    if not numeric:
      ax.set_xticks(list(positions.values()), tick_labels, rotation=30, ha='right')
    ax.set(xlabel=xlabel, title=panel)
    ax.grid(alpha=0.3)
    if any(name for name in lines) or highlight is not None:
      ax.legend(fontsize='small')
  axes[0].set_ylabel(ylabel)
  if title:
    fig.suptitle(title)
  fig.tight_layout()
  _save(fig, path)
