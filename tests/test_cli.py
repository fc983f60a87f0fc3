"""`lensutil doctor`: the report, its exit status, and the token that must never be printed."""

from lensutil.checks import cli


def test_doctor_passes_on_a_zoo_model_and_never_prints_the_token(monkeypatch, capsys):
    secret = "dummy" + "value" + "1234"
    monkeypatch.setenv("HF_TOKEN", secret)
    assert cli.main(["doctor", "--model", "tiny-llama"]) == 0
    out = capsys.readouterr().out
    assert "HF token      configured" in out
    assert secret not in out
    assert "✓" in out and "✗" not in out and "0 failed" in out


def test_doctor_fails_with_a_fix_when_a_check_fails(monkeypatch, capsys):
    monkeypatch.setitem(cli.LOGIT_BOUND, "float32", -1.0)  # no model can meet a negative bound
    assert cli.main(["doctor", "--model", "tiny-gpt2"]) == 1
    out = capsys.readouterr().out
    assert "✗ logits equal HuggingFace's" in out and "fix:" in out and "notebooks/05_" in out


def test_doctor_reports_an_unloadable_model(capsys):
    assert cli.main(["doctor", "--model", "/nonexistent/model/dir"]) == 1
    assert "✗ loading" in capsys.readouterr().out
