"""`crosssite report SWEEP`: the paper's Tables I-III and Figs. 3-5 from a sweep folder, with intervals.

Reads sweep.yaml (which jobs were planned), results.jsonl (per-job test metrics; the last line of a job
counts) and the jobs' predictions.csv, tail_predictions.csv and best.pt; writes report.md, tables/*.csv and
*.tex, and figures/*.png into the sweep folder. Everything is computed from the folder: the same folder
gives the same bytes.

In parts: `results` reads the folder, `tables` computes the numbers, `preregistered` the decisive
comparison of docs/preregistration.md, `render` turns numbers into Markdown and LaTeX, `figures` draws,
and `sections` lists report.md's sections, which `write_report` walks.
"""

from .preregistered import primary_contrast
from .render import primary_lines
from .results import load_results
from .sections import GRADCAM_EXAMPLES, SECTIONS, write_report

__all__ = ["GRADCAM_EXAMPLES", "SECTIONS", "load_results", "primary_contrast", "primary_lines", "write_report"]
