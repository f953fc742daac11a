"""python -m experiments.train --config=configs/t5_tiny.py --workdir=runs/t5_tiny

A T5-style encoder-decoder (2 + 2 layers, d_model 128, shared embeddings)
trained with span corruption (Raffel et al. 2020: 15% noise in spans of mean
length 3, one sentinel per span) on 128-token windows of the default corpus.
For (input, target) pairs instead:
  --config.data.source=file --config.data.path=pairs.jsonl
  --config.data.text_key=input --config.data.target_key=target
"""

from configs import tiny


def get_config(arg=None):
  c = tiny.get_config(arg)
  c.name = 't5_tiny'
  c.model.update(family='encoder_decoder', num_layers=2, num_decoder_layers=2)
  c.data.update(noise_density=0.15, mean_span=3.0)
  return c
