"""python -m experiments.train --config=configs/finetune_classify.py \
    --config.init_from=runs/tiny --config.data.path=train.csv \
    --config.data.eval_path=eval.csv --workdir=runs/cls

Sequence classification on top of a pre-trained decoder (configs/tiny.py's
architecture): a linear head on the pooled final hidden states, cross-entropy
over the labels, accuracy on the eval split. The data is a .csv (with a header)
or .jsonl file with `text` and `label` fields, or a TFDS catalog dataset:
  --config.data.source=tfds --config.data.tfds_name=glue/sst2
  --config.data.text_key=sentence --config.data.val_split=validation
Labels are the sorted distinct labels of the train split unless data.labels
lists them. --config.opt.freeze_backbone=True trains only the head (a linear
probe): the backward pass stops at the head, so a step costs about one forward
pass (tiny, 2-core CPU: 17.6 ms instead of 93.9 ms per step of 32 x 128 tokens).
It refuses to start without init_from (train.require_init_from); to train a
classifier from scratch, set --config.train.require_init_from=False.
"""

from configs import tiny


def get_config(arg=None):
  c = tiny.get_config(arg)
  c.name = 'finetune_classify'
  c.data.update(source='file', path='', eval_path='', label_key='label', text_key='text',
                seq_len=128)
  c.model.update(pool='last')  # The EOS that ends each example (see lm/classify.py).
  c.opt.update(lr=1e-3, warmup_steps=20, schedule='cosine', min_lr_ratio=0.0)
  c.train.update(batch_size=32, steps=300, eval_every=100, checkpoint_every=100,
                 require_init_from=True)
  return c
