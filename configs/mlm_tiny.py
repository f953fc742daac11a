"""python -m experiments.train --config=configs/mlm_tiny.py --workdir=runs/mlm_tiny

A BERT-style encoder (bidirectional attention; tied masked-LM head after BERT's
dense + GELU + LayerNorm transform) the size of
configs/tiny.py, trained with the masked-LM recipe of Devlin et al. 2019 (15%
of positions selected; 80% MASK, 10% random, 10% kept) on the default corpus.
Reports masked-token loss and accuracy; then try experiments.fill_mask.
"""

from configs import tiny


def get_config(arg=None):
  c = tiny.get_config(arg)
  c.name = 'mlm_tiny'
  c.model.update(family='encoder', mlm_transform=True)
  c.data.update(mlm_rate=0.15, mlm_mask_frac=0.8, mlm_random_frac=0.1)
  return c
