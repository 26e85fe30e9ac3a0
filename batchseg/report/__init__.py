"""Text and pages for people about a project's progress and results.

- `status_text`: the terminal text of `batchseg status` (state table, failure groups, one
  study's view) and `batchseg run`'s progress line.
- `model`: the review report of `batchseg report`: reads the ledger and each done study's
  files once and builds a `Report` (and its `--json` form).
- `html_page` (with `report.css`): the review report as one self-contained HTML page.
- `csv_rows`: the review report as CSV, one row per study.
"""
