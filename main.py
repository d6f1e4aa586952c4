r"""Trains and evaluates the SPP-ResNet brain-tumor classifier (see spp_resnet/main.py).

  python main.py --config=configs/default.py --workdir=runs/paper
  python main.py --workdir=runs/paper --mode=eval
"""

from spp_resnet.main import run

if __name__ == '__main__':
  run()
