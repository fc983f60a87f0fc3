"""The families the support table measures: one line each (name, HuggingFace classes, tiny zoo model).

Adding a family to lensutil (an adapter registered in lensutil/architectures/registry.py and a tiny
seeded zoo entry) means adding its line here; tests/test_support_table.py fails while a registered
HuggingFace class has no line, and while a line's row is not exact. A class may appear on more
than one line (e.g. Llama 3.x's RoPE scaling is LlamaForCausalLM with another tiny config).
"""

from __future__ import annotations

from typing import NamedTuple


class Family(NamedTuple):
    name: str  # as the support table prints it
    hf_classes: tuple[str, ...]  # config.architectures[0] values this family's adapter takes
    tiny: str  # a small zoo model of the family (lensutil/loading/zoo.py): the tiny seeded one where there is one


FAMILIES: tuple[Family, ...] = (
    Family("GPT-2", ("GPT2LMHeadModel",), "tiny-gpt2"),
    Family("Llama", ("LlamaForCausalLM",), "tiny-llama"),
    Family("Mistral", ("MistralForCausalLM",), "tiny-mistral"),
    Family("Qwen2", ("Qwen2ForCausalLM",), "tiny-qwen2"),
    Family("Mixtral (MoE)", ("MixtralForCausalLM",), "tiny-mixtral"),
    Family("Llama 3.x (llama3 RoPE scaling)", ("LlamaForCausalLM",), "tiny-llama3"),
    Family("Qwen3", ("Qwen3ForCausalLM",), "tiny-qwen3"),
    Family("Gemma", ("GemmaForCausalLM",), "tiny-gemma"),
    Family("Gemma 2", ("Gemma2ForCausalLM",), "tiny-gemma2"),
    Family("Gemma 3 (text)", ("Gemma3ForCausalLM",), "tiny-gemma3"),
    Family("OLMo 2", ("Olmo2ForCausalLM",), "tiny-olmo2"),
    Family("GPT-NeoX / Pythia", ("GPTNeoXForCausalLM",), "tiny-pythia"),
    Family("Phi-3", ("Phi3ForCausalLM",), "tiny-phi3"),
    Family("Qwen2-MoE", ("Qwen2MoeForCausalLM",), "tiny-qwen2-moe"),
    Family("Qwen3-MoE", ("Qwen3MoeForCausalLM",), "tiny-qwen3-moe"),
    Family("BERT (encoder, masked LM)", ("BertForMaskedLM",), "tiny-bert"),
    # No tiny BertModel in the zoo: the real all-MiniLM-L6-v2 (22M parameters) still takes seconds.
    Family("BERT (encoder, base)", ("BertModel",), "minilm-l6"),
)
