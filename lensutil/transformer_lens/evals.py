"""TransformerLens 2.x's `transformer_lens.evals` (lensutil/analysis/evals.py; it says where lensutil differs)."""

from ..analysis.evals import MMLU_ANSWER_LETTERS as MMLU_ANSWER_LETTERS
from ..analysis.evals import MMLU_SUBJECTS as MMLU_SUBJECTS
from ..analysis.evals import IOIDataset as IOIDataset
from ..analysis.evals import induction_loss as induction_loss
from ..analysis.evals import ioi_eval as ioi_eval
from ..analysis.evals import make_mmlu_data_loader as make_mmlu_data_loader
from ..analysis.evals import mmlu_eval as mmlu_eval
from ..analysis.evals import sanity_check as sanity_check
