"""Sample -> the teacher's English prompt, built from code titles, within a token budget.

The wording lives in ``data/resources/prompt_template.json`` (a :class:`Template`), so changing
the prompt never means string surgery in code. Unlike the reference code, each earlier visit
lists its OWN diagnoses, and the history is the LAST ``history`` visits before the current one.

Token budget: when a prompt exceeds ``max_length`` tokens, the oldest history visits go first,
then the end of the current visit's procedure list is cut ("…, and 7 more"), then the profile
sentence, and only then the end of the current visit's diagnosis list (recorded order, so the
primary diagnoses stay; at least one is always shown). A long visit therefore never stops a
run; only a budget too small for the intro, one diagnosis and the instruction is an error.
Every reduction is counted (:class:`PromptStats`) so that a run can say what it gave up.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any

from leader.configs import ConfigError
from leader.data.dataset import Dataset, Schema
from leader.data.samples import Sample, Visit, sample_id
from leader.data.vocab import Vocab, age_bucket
from leader.errors import LeaderError
from leader.llm import load_tokenizer
from leader.progress import counter

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


TITLES = ("long", "short")
CODED = ("diagnoses", "procedures")  # the kinds with ICD short titles


@dataclass(frozen=True)
class Prompt:
    text: str
    n_tokens: int | None  # None when no tokenizer measured it
    shortened: bool
    history_kept: int  # earlier visits shown
    # what the budget gave up (all 0 when the prompt fits)
    history_dropped: int = 0
    procedures_cut: int = 0
    profile_dropped: bool = False
    diagnoses_cut: int = 0
    # token ids as measured, so that a batch never tokenizes the text again
    input_ids: tuple[int, ...] | None = field(default=None, repr=False, compare=False)


@dataclass
class PromptStats:
    """Counts of every budget reduction and prompt lengths, for the manifest and the console."""

    prompts: int = 0
    shortened: int = 0
    history_visits_dropped: int = 0
    procedures_cut: int = 0
    profiles_dropped: int = 0
    diagnoses_cut: int = 0
    prompts_with_diagnoses_cut: int = 0
    tokens_p50: float | None = None
    tokens_p90: float | None = None
    tokens_max: int | None = None

    @classmethod
    def of(cls, prompts: Sequence[Prompt]) -> PromptStats:
        lengths = sorted(p.n_tokens for p in prompts if p.n_tokens is not None)
        return cls(
            prompts=len(prompts),
            shortened=sum(p.shortened for p in prompts),
            history_visits_dropped=sum(p.history_dropped for p in prompts),
            procedures_cut=sum(p.procedures_cut for p in prompts),
            profiles_dropped=sum(p.profile_dropped for p in prompts),
            diagnoses_cut=sum(p.diagnoses_cut for p in prompts),
            prompts_with_diagnoses_cut=sum(p.diagnoses_cut > 0 for p in prompts),
            tokens_p50=_quantile(lengths, 0.5),
            tokens_p90=_quantile(lengths, 0.9),
            tokens_max=lengths[-1] if lengths else None,
        )

    def to_dict(self) -> dict:
        return asdict(self)

    def line(self) -> str:
        """One console line: lengths, then what the budget cut."""
        lengths = (
            f"p50 {self.tokens_p50:.0f} / p90 {self.tokens_p90:.0f} / max {self.tokens_max} tokens"
            if self.tokens_max is not None
            else "lengths not measured"
        )
        return (
            f"{self.prompts} prompts, {lengths}; {self.shortened} shortened "
            f"({self.history_visits_dropped} history visits dropped, {self.procedures_cut} "
            f"procedures cut, {self.profiles_dropped} profile sentences dropped, "
            f"{self.diagnoses_cut} diagnoses cut in {self.prompts_with_diagnoses_cut} prompts)"
        )


def _quantile(sorted_values: Sequence[int], q: float) -> float | None:
    """Nearest-rank quantile (a value that occurs), None for no values."""
    if not sorted_values:
        return None
    return float(sorted_values[max(0, math.ceil(q * len(sorted_values)) - 1)])


@dataclass(frozen=True)
class _Parts:
    """What a prompt shows; the budget search shrinks it step by step."""

    history: tuple[tuple[int, Visit], ...]  # (1-based visit number, visit), oldest first
    procedures_kept: int | None  # None = all of the current visit's procedures
    profile: bool
    diagnoses_kept: int | None = None  # None = all of the current visit's diagnoses


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
        titles: str = "long",
    ):
        if history < 0:
            raise ConfigError("history", f"must be 0 or more, not {history}")
        if max_length is not None and (max_length < 1 or tokenizer is None):
            raise ConfigError("max_length", f"{max_length} needs a positive value and a tokenizer")
        if titles not in TITLES:
            raise ConfigError("titles", f"{titles!r} is not one of {', '.join(TITLES)}")
        if titles == "short" and not all(schema.vocab[k].short_titles for k in CODED):
            raise LeaderError(
                "titles: short titles are not stored in this data (MIMIC-IV has none; prepare "
                "a MIMIC-III source again to store them); use long titles"
            )
        self.vocab = schema.vocab
        self.titles = titles
        self.history = history
        self.profile = profile
        self.max_length = max_length
        self.tokenizer = tokenizer
        self.template = template or Template.default()

    # --- text pieces ---------------------------------------------------------------------------

    def _titles(self, codes: Sequence[str], kind: str, keep: int | None = None) -> str:
        vocab: Vocab = self.vocab[kind]
        title = vocab.short_title if self.titles == "short" else vocab.title
        titles = [_readable(c, title(c)) for c in codes]
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
                diagnoses=self._titles(current.diagnoses, "diagnoses", parts.diagnoses_kept),
                procedures=self._titles(current.procedures, "procedures", parts.procedures_kept),
            )
        )
        sentences.append(t.instruction)
        return " ".join(s for s in sentences if s)

    # --- the budget ----------------------------------------------------------------------------

    def _stages(self, sample: Sample, full: _Parts) -> Iterator[list[_Parts]]:
        """Groups of ever shorter variants, in the order the budget gives things up; within a
        group the variants only shrink, so the longest that fits is found by bisection."""
        parts = full
        history = []
        while parts.history:
            parts = replace(parts, history=parts.history[1:])
            history.append(parts)
        yield history
        procedures = len(sample.current.procedures)
        yield [replace(parts, procedures_kept=k) for k in range(procedures - 1, -1, -1)]
        parts = replace(parts, procedures_kept=0 if procedures else None)
        if parts.profile:
            parts = replace(parts, profile=False)
            yield [parts]
        diagnoses = len(sample.current.diagnoses)
        yield [replace(parts, diagnoses_kept=k) for k in range(diagnoses - 1, 0, -1)]

    def count(self, text: str) -> int:
        return len(self.tokenizer(text)["input_ids"])

    def _measure(self, sample: Sample, parts: _Parts) -> tuple[str, list[int]]:
        text = self._render(sample, parts)
        return text, self.tokenizer(text)["input_ids"]

    def build(self, sample: Sample) -> Prompt:
        earlier = sample.history[-self.history :] if self.history else ()
        first_number = len(sample.history) - len(earlier) + 1
        full = _Parts(
            history=tuple((first_number + i, v) for i, v in enumerate(earlier)),
            procedures_kept=None,
            profile=self.profile,
        )
        if self.tokenizer is None:
            return Prompt(self._render(sample, full), None, False, len(full.history))
        text, ids = self._measure(sample, full)
        if self.max_length is None or len(ids) <= self.max_length:
            return Prompt(text, len(ids), False, len(full.history), input_ids=tuple(ids))
        smallest = full
        for group in self._stages(sample, full):
            found = self._first_fit(sample, group)
            if found is not None:
                parts, text, ids = found
                return self._shortened(sample, full, parts, text, ids)
            smallest = group[-1] if group else smallest
        raise ConfigError(
            "max_length", f"{self.max_length}: too small for sample {sample.sample_id}; even "
            f"with one diagnosis it takes {len(self._measure(sample, smallest)[1])} tokens"
        )

    def _first_fit(
        self, sample: Sample, group: list[_Parts]
    ) -> tuple[_Parts, str, list[int]] | None:
        """The first (longest) variant of ``group`` within the budget, by bisection."""
        lo, hi, best = 0, len(group) - 1, None
        while lo <= hi:
            mid = (lo + hi) // 2
            text, ids = self._measure(sample, group[mid])
            if len(ids) <= self.max_length:
                best, hi = (group[mid], text, ids), mid - 1
            else:
                lo = mid + 1
        return best

    def _shortened(
        self, sample: Sample, full: _Parts, parts: _Parts, text: str, ids: list[int]
    ) -> Prompt:
        current = sample.current
        procedures = _kept(parts.procedures_kept, len(current.procedures))
        diagnoses = _kept(parts.diagnoses_kept, len(current.diagnoses))
        return Prompt(
            text,
            len(ids),
            True,
            len(parts.history),
            history_dropped=len(full.history) - len(parts.history),
            procedures_cut=len(current.procedures) - procedures,
            profile_dropped=full.profile and not parts.profile,
            diagnoses_cut=len(current.diagnoses) - diagnoses,
            input_ids=tuple(ids),
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
        raise ConfigError("patient", f"{patient}: no such patient in the data directory")
    if visit is None:
        return mine[-1]
    wanted = sample_id(patient, visit)
    for s in mine:
        if s.sample_id == wanted:
            return s
    known = ", ".join(s.sample_id.rsplit("/", 1)[1] for s in mine)
    raise ConfigError("visit", f"{visit}: patient {patient} has visits {known}")


def render_prompt(
    data_dir: str | Path,
    patient: str,
    visit: int | None = None,
    *,
    history: int = DEFAULT_HISTORY,
    profile: bool = False,
    max_length: int | None = None,
    llm: str = "smollm2",
    titles: str = "long",
) -> tuple[Sample, Prompt]:
    """The prompt of one visit of DATA_DIR, exactly as training builds it."""

    data = Dataset.load(data_dir)
    sample = find_sample(data.samples(), str(patient), visit)
    tokenizer = load_tokenizer(llm) if max_length is not None else None
    builder = PromptBuilder(
        data.schema, history=history, profile=profile, max_length=max_length, tokenizer=tokenizer,
        titles=titles,
    )
    return sample, builder.build(sample)


def prompt_stats(
    data_dir: str | Path,
    *,
    split: str | None = None,
    history: int = DEFAULT_HISTORY,
    profile: bool = False,
    max_length: int | None = None,
    titles: str = "long",
    llm: str = "smollm2",
    progress: bool = False,
) -> PromptStats:
    """Lengths and budget reductions of every prompt of DATA_DIR (or one split), measured with
    the backbone's tokenizer only: what a teacher run would build, without loading weights."""
    data = Dataset.load(data_dir)
    builder = PromptBuilder(
        data.schema, history=history, profile=profile, max_length=max_length,
        tokenizer=load_tokenizer(llm), titles=titles,
    )
    samples = data.samples(split)
    with counter("prompts", len(samples), progress) as done:
        prompts, _ = builder.build_many(samples, done)
    return PromptStats.of(prompts)


def _kept(kept: int | None, total: int) -> int:
    return total if kept is None else kept


def _readable(code: str, title: str) -> str:
    """A code without a title (some MIMIC codes are missing from D_ICD_*) reads as
    ``ICD-9 code 5672`` rather than the internal key ``icd9:5672``."""
    if title != code or not code.startswith("icd") or ":" not in code:
        return title
    version, bare = code.split(":", 1)
    return f"ICD-{version.removeprefix('icd')} code {bare}"
