"""`lensutil doctor` passes on every family issue 26 added (tests/test_rotary_families.py covers Llama 3.x, Pythia, Phi-3)."""

import pytest


@pytest.mark.parametrize("name", ["tiny-qwen3", "tiny-gemma", "tiny-gemma2", "tiny-gemma3", "tiny-olmo2",
                                  "tiny-qwen2-moe", "tiny-qwen3-moe"])
def test_doctor_passes_on_each_new_family(name, capsys):
    from lensutil.checks import cli

    assert cli.main(["doctor", "--model", name]) == 0, capsys.readouterr().out
