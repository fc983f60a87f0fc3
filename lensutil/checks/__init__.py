"""The kit's checks: comparison with HuggingFace, error tables, divergence, setup checks and the `lensutil` CLI."""

from .compare import DEFAULT_PROMPTS as DEFAULT_PROMPTS, compare_with_hf as compare_with_hf
from .divergence import locate_divergence as locate_divergence, routing_agreement as routing_agreement
from .error_table import OPTIONS as OPTIONS, ErrorTable as ErrorTable, error_table as error_table
from .setup import (
    Check as Check,
    SetupReport as SetupReport,
    bound_check as bound_check,
    validate_model_setup as validate_model_setup,
)
from .stats import DivergenceReport as DivergenceReport, ErrorStats as ErrorStats
