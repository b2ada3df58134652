"""The evidence pages quote the committed sweeps' reports and nothing else: every decimal number in
README's evidence section and in docs/evidence.md (but its provenance section, which reports re-runs
outside the sweep with their own command) appears in results/cpu/report.md,
results/cpu-decisive/report.md or results/federated/report.md, so the prose cannot drift from the reports."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NUMBER = re.compile(r"(?<![\w.])[+-]?\d+\.\d+")  # decimals carry the measurements; integers count things
UNCHECKED = "## Provenance"  # sections of docs/evidence.md whose numbers come from elsewhere
REPORTS = ("results/cpu/report.md", "results/cpu-decisive/report.md",  # the sweeps the evidence quotes
           "results/federated/report.md")


def headings(text: str):
    """(line, heading level or None) of a Markdown text; lines in code blocks are no headings."""
    fenced = False
    for line in text.splitlines():
        fenced ^= line.startswith("```")
        heading = None if fenced else re.match(r"(#+) ", line)
        yield line, len(heading.group(1)) if heading else None


def sections(text: str, keep) -> str:
    """The Markdown sections (heading to the next heading of the same or a higher level) whose heading
    `keep` accepts."""
    out, level = [], None
    for line, depth in headings(text):
        if depth and (level is None or depth <= level):
            level = depth if keep(line) else None
        if level is not None:
            out.append(line)
    return "\n".join(out)


def without(text: str, prefix: str) -> str:
    """The text less the sections whose heading starts with `prefix` (to the next heading of their level
    or a higher one)."""
    out, skipping = [], None
    for line, depth in headings(text):
        if depth and skipping is not None and depth <= skipping:
            skipping = None
        if depth and line.startswith(prefix):
            skipping = depth
        if skipping is None:
            out.append(line)
    return "\n".join(out)


def quoted_numbers() -> dict[str, list[str]]:
    readme = sections((ROOT / "README.md").read_text(), lambda h: "evidence" in h.lower())
    page = ROOT / "docs" / "evidence.md"
    evidence = without(page.read_text(), UNCHECKED) if page.is_file() else ""
    return {"README.md": NUMBER.findall(readme), "docs/evidence.md": NUMBER.findall(evidence)}


def test_every_number_the_evidence_quotes_is_in_the_report():
    printed = {n for report in REPORTS for n in NUMBER.findall((ROOT / report).read_text())}
    unsigned = {n.lstrip("+-") for n in printed}  # prose may say "lower by 1.6" for the report's -1.6
    found = quoted_numbers()
    assert found["README.md"], "README.md has no evidence section with numbers"
    def quoted(n: str) -> bool:
        return n in printed if n[0] in "+-" else n in unsigned

    missing = {page: [n for n in numbers if not quoted(n)] for page, numbers in found.items()}
    assert missing == {"README.md": [], "docs/evidence.md": []}
