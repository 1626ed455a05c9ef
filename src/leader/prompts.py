"""Sample -> the teacher's English prompt, built from code titles, within a token budget.

The wording lives in ``data/resources/prompt_template.json`` (a :class:`Template`), so changing
the prompt never means string surgery in code. Unlike the reference code, each earlier visit
lists its OWN diagnoses, and the history is the LAST ``history`` visits before the current one.

Token budget: when a prompt exceeds ``max_length`` tokens, the oldest history visits go first,
then the current visit's procedure list is cut ("…, and 7 more"), then the profile sentence.
The current visit's diagnoses and the closing instruction are never removed; if they alone do
not fit, the budget is too small for this sample and that is an error.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path
from typing import Any

from leader.data.dataset import Dataset, Schema
from leader.data.samples import Sample, Visit, sample_id
from leader.data.vocab import Vocab, age_bucket
from leader.errors import LeaderError
from leader.llm import load_tokenizer

DEFAULT_HISTORY = 3


@dataclass(frozen=True)
class Template:
    """The prompt's wording; fields are ``str.format`` patterns (see the JSON file)."""

    intro: str
    profile: str
    profile_field: str
    profile_names: dict
    history_visit: str
    current_visit: str
    instruction: str
    pronouns: dict
    default_pronoun: str
    separator: str
    more: str
    empty: str

    @classmethod
    def default(cls) -> Template:
        text = resources.files("leader.data").joinpath("resources/prompt_template.json")
        return cls(**json.loads(text.read_text()))


@dataclass(frozen=True)
class Prompt:
    text: str
    n_tokens: int | None  # None when no tokenizer measured it
    shortened: bool
    history_kept: int  # earlier visits shown


@dataclass(frozen=True)
class _Parts:
    """What a prompt shows; the budget search shrinks it step by step."""

    history: tuple[tuple[int, Visit], ...]  # (1-based visit number, visit), oldest first
    procedures_kept: int | None  # None = all of the current visit's procedures
    profile: bool


class PromptBuilder:
    """Builds prompts for samples of one schema (titles from its vocabularies)."""

    def __init__(
        self,
        schema: Schema,
        *,
        history: int = DEFAULT_HISTORY,
        profile: bool = False,
        max_length: int | None = None,
        tokenizer: Any = None,
        template: Template | None = None,
    ):
        if history < 0:
            raise LeaderError(f"--history: must be 0 or more, not {history}")
        if max_length is not None and (max_length < 1 or tokenizer is None):
            raise LeaderError(f"--max-length: {max_length} needs a positive value and a tokenizer")
        self.vocab = schema.vocab
        self.history = history
        self.profile = profile
        self.max_length = max_length
        self.tokenizer = tokenizer
        self.template = template or Template.default()

    # --- text pieces ---------------------------------------------------------------------------

    def _titles(self, codes: Sequence[str], kind: str, keep: int | None = None) -> str:
        vocab: Vocab = self.vocab[kind]
        titles = [_readable(c, vocab.title(c)) for c in codes]
        if kind == "drugs":
            titles = [t.lower() for t in titles]
        if not titles:
            return self.template.empty
        if keep is not None and keep < len(titles):
            shown = titles[:keep] + [self.template.more.format(n=len(titles) - keep)]
            return self.template.separator.join(shown)
        return self.template.separator.join(titles)

    def _profile_sentence(self, profile: dict) -> str:
        t = self.template
        items = []
        for name, value in profile.items():
            if name == "age":
                value = age_bucket(value)
            if value is None or str(value) == "unknown":
                continue
            label = t.profile_names.get(name, name.replace("_", " "))
            items.append(t.profile_field.format(name=label, value=str(value).lower()))
        return t.profile.format(fields=", ".join(items)) if items else ""

    def _render(self, sample: Sample, parts: _Parts) -> str:
        t, current = self.template, sample.current
        sentences = [t.intro.format(n_visits=len(sample.visits))]
        if parts.profile:
            sentences.append(self._profile_sentence(sample.profile))
        for number, visit in parts.history:
            sentences.append(
                t.history_visit.format(
                    number=number,
                    diagnoses=self._titles(visit.diagnoses, "diagnoses"),
                    procedures=self._titles(visit.procedures, "procedures"),
                    drugs=self._titles(visit.drugs, "drugs"),
                )
            )
        gender = str(sample.profile.get("gender", "")).upper()
        sentences.append(
            t.current_visit.format(
                pronoun=t.pronouns.get(gender, t.default_pronoun),
                diagnoses=self._titles(current.diagnoses, "diagnoses"),
                procedures=self._titles(current.procedures, "procedures", parts.procedures_kept),
            )
        )
        sentences.append(t.instruction)
        return " ".join(s for s in sentences if s)

    # --- the budget ----------------------------------------------------------------------------

    def _reductions(self, sample: Sample, full: _Parts) -> Iterator[_Parts]:
        """Ever shorter variants, in the order the budget gives things up."""
        parts = full
        while parts.history:
            parts = replace(parts, history=parts.history[1:])
            yield parts
        for keep in range(len(sample.current.procedures) - 1, -1, -1):
            parts = replace(parts, procedures_kept=keep)
            yield parts
        if parts.profile:
            yield replace(parts, profile=False)

    def count(self, text: str) -> int:
        return len(self.tokenizer(text)["input_ids"])

    def build(self, sample: Sample) -> Prompt:
        earlier = sample.history[-self.history :] if self.history else ()
        first_number = len(sample.history) - len(earlier) + 1
        full = _Parts(
            history=tuple((first_number + i, v) for i, v in enumerate(earlier)),
            procedures_kept=None,
            profile=self.profile,
        )
        text = self._render(sample, full)
        if self.tokenizer is None:
            return Prompt(text, None, False, len(full.history))
        n = self.count(text)
        if self.max_length is None or n <= self.max_length:
            return Prompt(text, n, False, len(full.history))
        for parts in self._reductions(sample, full):
            text = self._render(sample, parts)
            n = self.count(text)
            if n <= self.max_length:
                return Prompt(text, n, True, len(parts.history))
        raise LeaderError(
            f"--max-length {self.max_length}: too small for sample {sample.sample_id}; its "
            f"current diagnoses and the instruction alone take {n} tokens"
        )

    def build_many(
        self, samples: Sequence[Sample], on_progress: Callable[[int], None] | None = None
    ) -> tuple[list[Prompt], int]:
        """Prompts for ``samples`` and how many of them had to be shortened."""
        prompts = []
        for s in samples:
            prompts.append(self.build(s))
            if on_progress is not None:
                on_progress(1)
        return prompts, sum(p.shortened for p in prompts)


def find_sample(samples: Sequence[Sample], patient: str, visit: int | None) -> Sample:
    """The sample of ``patient`` at ``visit`` (the data's 0-based visit index; None = the last)."""
    mine = [s for s in samples if s.patient_id == patient]
    if not mine:
        raise LeaderError(f"--patient {patient}: no such patient in the data directory")
    if visit is None:
        return mine[-1]
    wanted = sample_id(patient, visit)
    for s in mine:
        if s.sample_id == wanted:
            return s
    known = ", ".join(s.sample_id.rsplit("/", 1)[1] for s in mine)
    raise LeaderError(f"--visit {visit}: patient {patient} has visits {known}")


def render_prompt(
    data_dir: str | Path,
    patient: str,
    visit: int | None = None,
    *,
    history: int = DEFAULT_HISTORY,
    profile: bool = False,
    max_length: int | None = None,
    llm: str = "smollm2",
) -> tuple[Sample, Prompt]:
    """The prompt of one visit of DATA_DIR, exactly as training builds it."""

    data = Dataset.load(data_dir)
    sample = find_sample(data.samples(), str(patient), visit)
    tokenizer = load_tokenizer(llm) if max_length is not None else None
    builder = PromptBuilder(
        data.schema, history=history, profile=profile, max_length=max_length, tokenizer=tokenizer
    )
    return sample, builder.build(sample)


def _readable(code: str, title: str) -> str:
    """A code without a title (some MIMIC codes are missing from D_ICD_*) reads as
    ``ICD-9 code 5672`` rather than the internal key ``icd9:5672``."""
    if title != code or not code.startswith("icd") or ":" not in code:
        return title
    version, bare = code.split(":", 1)
    return f"ICD-{version.removeprefix('icd')} code {bare}"
