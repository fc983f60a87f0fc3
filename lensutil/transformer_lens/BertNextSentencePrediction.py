"""TransformerLens 2.x's `transformer_lens.BertNextSentencePrediction` module."""

from ..model.next_sentence import BertNextSentencePrediction as BertNextSentencePrediction
