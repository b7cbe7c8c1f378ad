"""LAMA probing (Petroni et al. 2019): cloze queries, P@k, baselines and analyses."""
