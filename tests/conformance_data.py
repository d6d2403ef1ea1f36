"""Reading the RFC 4475 / RFC 5118 torture set and its expected outcomes."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).parent / "conformance" / "rfc4475"
OUR_ROLES = ("uas", "registrar")


@dataclass(frozen=True)
class Case:
    path: Path
    name: str
    tokens: frozenset[str]  # acceptable outcomes for our roles

    @property
    def data(self) -> bytes:
        return self.path.read_bytes()


def _tokens(expected: str, also_ok: str) -> frozenset[str]:
    out = set()
    for field in (expected, also_ok):
        if field == "-":
            continue
        for token in field.replace("|", ";").split(";"):
            token = token.strip()
            role, sep, outcome = token.partition(":")
            if not sep:
                out.add(token)
            elif role in OUR_ROLES:
                out.add(outcome)
    return frozenset(out)


def cases() -> list[Case]:
    found = []
    for table, folder in ((ROOT / "expected.tsv", ROOT), (ROOT / "rfc5118" / "expected.tsv", ROOT / "rfc5118")):
        with table.open(newline="") as f:
            for row in csv.DictReader(f, delimiter="\t"):
                found.append(Case(folder / row["file"], row["name"], _tokens(row["expected"], row["also_ok"])))
    variant = ROOT / "variants" / "3.1.2.15_baddn.terminated.sip"
    found.append(Case(variant, "baddn.terminated", frozenset({"reject-400", "parse-ok"})))
    return found
