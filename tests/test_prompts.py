"""Teacher prompts: content (own diagnoses per visit, last K history, profile) and the budget."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from leader.cli import _register, app
from leader.data.samples import Sample, Visit
from leader.errors import LeaderError
from leader.llm import tiny_tokenizer
from leader.prompts import PromptBuilder, Template

_register()
runner = CliRunner()


def _sample(data, n_visits: int = 5) -> Sample:
    """A patient whose visit t has diagnosis t and procedure t (so leaks are easy to spot)."""
    dx, px, drugs = (data.vocab[k].codes for k in ("diagnoses", "procedures", "drugs"))
    visits = tuple(
        Visit((dx[t],), (px[t],), (drugs[t],) if t < n_visits - 1 else ()) for t in range(n_visits)
    )
    profile = {"gender": "F", "age": 71, "insurance": "Medicare", "language": "unknown"}
    return Sample("p1/4", "p1", visits, profile, "test")


def _title(data, kind: str, t: int) -> str:
    return data.vocab[kind].titles[t]


def test_template_wording_and_own_diagnoses(tiny_data):
    s = _sample(tiny_data)
    text = PromptBuilder(tiny_data.schema).build(s).text
    assert text.startswith("The patient has 5 times ICU visits.")
    assert text.endswith("Then, the patient should be prescribed:")
    # the last 3 earlier visits (2, 3, 4), each with its OWN diagnoses and drugs
    for t in (1, 2, 3):
        sentence = text.split(f"In visit {t + 1}, ")[1].split("In ")[0]
        assert f"diagnosis: {_title(tiny_data, 'diagnoses', t)};" in sentence
        assert f"procedures: {_title(tiny_data, 'procedures', t)}." in sentence
        assert f"prescribed drugs: {_title(tiny_data, 'drugs', t).lower()}." in sentence
    assert "In visit 1," not in text and _title(tiny_data, "diagnoses", 0) not in text
    current = text.split("In this visit, ")[1]
    assert current.startswith("she has diagnosis: " + _title(tiny_data, "diagnoses", 4))
    assert "insurance" not in text  # profile off by default


def test_history_k_and_first_visit(tiny_data):
    s = _sample(tiny_data)
    one = PromptBuilder(tiny_data.schema, history=1).build(s)
    assert one.history_kept == 1 and "In visit 4," in one.text and "In visit 3," not in one.text
    first = Sample("p/0", "p", s.visits[:1], {}, "test")
    text = PromptBuilder(tiny_data.schema).build(first).text
    assert "1 times ICU visits" in text and "In visit" not in text and "he has" in text


def test_profile_sentence(tiny_data):
    text = PromptBuilder(tiny_data.schema, profile=True).build(_sample(tiny_data)).text
    assert "The patient's gender is f, age is 70-79, insurance type is medicare." in text
    assert "language" not in text  # unknown values are left out


def test_budget_drops_oldest_history_first(tiny_data):
    tok = tiny_tokenizer()
    s = _sample(tiny_data)
    full = PromptBuilder(tiny_data.schema, tokenizer=tok).build(s)
    assert full.n_tokens == len(tok(full.text)["input_ids"]) and not full.shortened
    budget = full.n_tokens - 10
    cut = PromptBuilder(tiny_data.schema, tokenizer=tok, max_length=budget).build(s)
    assert cut.shortened and cut.n_tokens <= budget and cut.history_kept == 2
    assert "In visit 2," not in cut.text and "In visit 3," in cut.text and "In visit 4," in cut.text


def test_budget_cuts_lists_but_keeps_current_diagnoses(tiny_data):
    tok = tiny_tokenizer()
    dx, px = tiny_data.vocab["diagnoses"].codes, tiny_data.vocab["procedures"].codes
    long = Sample("q/1", "q", (Visit((dx[0],), (px[0],), ()), Visit(tuple(dx[:3]), tuple(px))))
    builder = PromptBuilder(tiny_data.schema, tokenizer=tok, max_length=260)
    p = builder.build(long)
    assert p.shortened and p.n_tokens <= 260 and p.history_kept == 0
    assert "more." in p.text  # the procedure list was cut and says how much is hidden
    for code in dx[:3]:
        assert tiny_data.vocab["diagnoses"].title(code) in p.text
    assert p.text.endswith("Then, the patient should be prescribed:")
    prompts, shortened = builder.build_many([long, _sample(tiny_data, 1)])
    assert shortened == 1 and not prompts[1].shortened
    with pytest.raises(LeaderError, match="too small for sample q/1"):
        PromptBuilder(tiny_data.schema, tokenizer=tok, max_length=100).build(long)


def test_template_is_data():
    t = Template.default()
    assert "{n_visits}" in t.intro and t.instruction.endswith("prescribed:")


def test_prompt_cli(tiny_data_dir, tiny_data):
    s = next(x for x in tiny_data.samples() if len(x.visits) >= 2)
    result = runner.invoke(app, ["prompt", str(tiny_data_dir), "--patient", s.patient_id])
    assert result.exit_code == 0, result.output
    assert "Then, the patient should be prescribed:" in result.output
    visit0 = runner.invoke(
        app, ["prompt", str(tiny_data_dir), "--patient", s.patient_id, "--visit", "0"]
    )
    assert "1 times ICU visits" in visit0.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--patient", "nobody"], "patient: nobody: no such patient"),
        (["--patient", "10000", "--visit", "99"], "visit: 99"),
        (["--patient", "10000", "--history", "-1"], "history: must be 0 or more"),
        (["--patient", "10000", "--max-length", "20", "--llm", "tiny"],
         "max_length: 20: too small"),
    ],
)
def test_prompt_cli_bad_input(tiny_data_dir, args, message):
    result = runner.invoke(app, ["prompt", str(tiny_data_dir), *args])
    assert result.exit_code != 0
    assert isinstance(result.exception, LeaderError) and message in str(result.exception)


def test_prompt_cli_other_directory(tmp_path):
    (tmp_path / "manifest.json").write_text('{"kind": "leader-model", "format_version": 1}')
    result = runner.invoke(app, ["prompt", str(tmp_path), "--patient", "1"])
    assert isinstance(result.exception, LeaderError) and "expected 'leader-data'" in str(
        result.exception
    )


def test_code_without_title_reads_as_icd_code(tiny_data):
    from leader.data.samples import Sample, Visit
    from leader.llm import tiny_tokenizer
    from leader.prompts import PromptBuilder

    vocab = tiny_data.vocab["diagnoses"]
    code = vocab.codes[0]
    saved = vocab.titles[0]
    vocab.titles[0] = code  # as prepare stores a code missing from D_ICD_DIAGNOSES
    try:
        builder = PromptBuilder(tiny_data.schema, tokenizer=tiny_tokenizer())
        text = builder.build(Sample("p/0", "p", (Visit((code,), ()),))).text
    finally:
        vocab.titles[0] = saved
    assert f"ICD-9 code {code.split(':')[1]}" in text and code not in text
