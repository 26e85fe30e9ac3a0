"""The ledger's summary counters and each study's attempt seconds, kept by triggers inside the database.

`status`, `run`'s progress line and `report` need counts: studies per state,
failed and skipped studies per error class, claims ever made, studies ever
retried. Counting them from the tables costs time in proportion to the ledger
(0.8 s at a million studies); these counters cost the same at any size.

Triggers, not the application, keep them: every statement that changes a
study's state or appends to the history updates the counters in the same
transaction, whichever code (or batchseg version, or hand-written SQL) ran it,
so they cannot drift from the rows they count.

Counter names: `state:<state>`, `<failed|skipped>:<error class>` (`unknown`
when the class is empty), `claims` (claimed events), `retried` (studies with
at least one failed or lost attempt that went back to pending).

SQLite has one writer at a time, so its triggers add to `counts` directly.
PostgreSQL's writers run side by side, and one hot row per counter would make
every claim wait for every other (and deadlock when two take the same rows in
another order), so its triggers only insert rows into `count_deltas`; a claim
folds the deltas into `counts` when no other transaction is folding
(`pg_try_advisory_xact_lock`: a busy folder is skipped, never waited for).
Readers add `counts` and the deltas not folded yet, in one snapshot.

`studies.attempt_seconds` is the sum of the claim-to-outcome seconds of every
attempt the study has had (the `duration` of its done, failed, lost and released
history rows; NULL until one ends): a trigger on each such history row adds it,
so `report` reads one column instead of summing the whole history per report.
"""
from __future__ import annotations

COUNTS_VERSION = "1"    # meta key "counts": the triggers are installed and the counters filled
PROBLEM_STATES = ("failed", "skipped")
RETRY_EVENTS = ("failed", "lost")
FOLD_LOCK = 0x62617463686367   # advisory lock key of the folder ("batchcg")

# The counters from the rows themselves: a new or migrated ledger starts from these.
FILL = (
    "DELETE FROM counts",
    "DELETE FROM count_deltas",
    "INSERT INTO counts (name, n) SELECT 'state:' || state, count(*) FROM studies GROUP BY state",
    "INSERT INTO counts (name, n) SELECT state || ':' || coalesce(error_class, 'unknown'), count(*) FROM studies "
    "WHERE state IN ('failed', 'skipped') GROUP BY state, coalesce(error_class, 'unknown')",
    "INSERT INTO counts (name, n) SELECT 'claims', count(*) FROM history WHERE event = 'claimed'",
    "INSERT INTO counts (name, n) SELECT 'retried', count(DISTINCT study_id) FROM history "
    "WHERE event IN ('failed', 'lost') AND to_state = 'pending'",
)

READ = ("SELECT name, sum(n) FROM (SELECT name, n FROM counts UNION ALL SELECT name, delta AS n FROM count_deltas) "
        "AS c GROUP BY name")

# PostgreSQL: fold every visible delta into counts, unless another transaction is folding right now.
FOLD = (
    "WITH gone AS (DELETE FROM count_deltas WHERE (SELECT pg_try_advisory_xact_lock(%d)) RETURNING name, delta) "
    "INSERT INTO counts (name, n) SELECT name, sum(delta) FROM gone GROUP BY name ORDER BY name "
    "ON CONFLICT (name) DO UPDATE SET n = counts.n + excluded.n" % FOLD_LOCK
)


def _sqlite_add(key: str, amount: str, when: str = "") -> str:
    # SQLite's upsert after INSERT ... SELECT needs a WHERE clause to parse (WHERE true at least).
    return (f"INSERT INTO counts (name, n) SELECT {key}, {amount} WHERE {when or 'true'} "
            f"ON CONFLICT (name) DO UPDATE SET n = n + excluded.n;")


def _group(row: str) -> str:
    return f"{row}.state || ':' || coalesce({row}.error_class, 'unknown')"


_IS_PROBLEM = "{row}.state IN ('failed', 'skipped')"

# One trigger per counter, each with a WHEN: SQLite tests a WHEN far faster than it runs a statement, so an insert
# of a pending study (a million of them in one `init`) pays for one counter, not for every one that might apply.
_STATE_CHANGED = "OLD.state IS NOT NEW.state"
_GROUP_CHANGED = (f"({_IS_PROBLEM.format(row='OLD')} OR {_IS_PROBLEM.format(row='NEW')}) "
                  "AND (OLD.state IS NOT NEW.state OR OLD.error_class IS NOT NEW.error_class)")
_SQLITE = (
    # name, event, WHEN, body
    ("counts_state_insert", "INSERT ON studies", "", (_sqlite_add("'state:' || NEW.state", "1"),)),
    ("counts_group_insert", "INSERT ON studies", _IS_PROBLEM.format(row="NEW"), (_sqlite_add(_group("NEW"), "1"),)),
    ("counts_state_update", "UPDATE OF state ON studies", _STATE_CHANGED,
     (_sqlite_add("'state:' || OLD.state", "-1"), _sqlite_add("'state:' || NEW.state", "1"))),
    ("counts_group_update", "UPDATE OF state, error_class ON studies", _GROUP_CHANGED,
     (_sqlite_add(_group("OLD"), "-1", _IS_PROBLEM.format(row="OLD")),
      _sqlite_add(_group("NEW"), "1", _IS_PROBLEM.format(row="NEW")))),
    ("counts_state_delete", "DELETE ON studies", "", (_sqlite_add("'state:' || OLD.state", "-1"),)),
    ("counts_group_delete", "DELETE ON studies", _IS_PROBLEM.format(row="OLD"), (_sqlite_add(_group("OLD"), "-1"),)),
    ("counts_claims", "INSERT ON history", "NEW.event = 'claimed'", (_sqlite_add("'claims'", "1"),)),
    # A study counts as retried once: at its first failed or lost attempt that went back to pending.
    ("counts_retried", "INSERT ON history", "NEW.event IN ('failed', 'lost') AND NEW.to_state = 'pending'",
     (_sqlite_add("'retried'", "1", "NOT EXISTS (SELECT 1 FROM history h WHERE h.study_id = NEW.study_id "
                  "AND h.id < NEW.id AND h.event IN ('failed', 'lost') AND h.to_state = 'pending')"),)),
)
# Each study's attempt seconds: every outcome row with a duration adds it to its study (the same row the outcome
# changed, in the same transaction). FILL_ATTEMPT_SECONDS makes the column from the history of a ledger made before it.
ATTEMPT_SECONDS_VERSION = "1"   # meta key "attempt_seconds": studies.attempt_seconds and its trigger are there
ATTEMPT_EVENTS = ("done", "failed", "lost", "released")
_ATTEMPT_EVENTS_SQL = ", ".join(repr(e) for e in ATTEMPT_EVENTS)
_IS_ATTEMPT_END = f"NEW.event IN ({_ATTEMPT_EVENTS_SQL}) AND NEW.duration IS NOT NULL"
_ADD_ATTEMPT_SECONDS = ("UPDATE studies SET attempt_seconds = coalesce(attempt_seconds, 0) + NEW.duration "
                        "WHERE study_id = NEW.study_id;")
FILL_ATTEMPT_SECONDS = (
    "UPDATE studies SET attempt_seconds = a.seconds FROM (SELECT study_id, sum(duration) AS seconds FROM history "
    f"WHERE event IN ({_ATTEMPT_EVENTS_SQL}) GROUP BY study_id) AS a "
    "WHERE a.study_id = studies.study_id")
_ATTEMPT_TRIGGER = "attempt_seconds_history_insert"
_ATTEMPT_SECONDS_DDL = {
    "sqlite": (f"DROP TRIGGER IF EXISTS {_ATTEMPT_TRIGGER}",
               f"CREATE TRIGGER {_ATTEMPT_TRIGGER} AFTER INSERT ON history WHEN {_IS_ATTEMPT_END} BEGIN\n  "
               f"{_ADD_ATTEMPT_SECONDS}\nEND"),
    # One row at a time, with a WHEN: claims (half the history) and init's `added` rows never call the function.
    "postgresql": ("CREATE OR REPLACE FUNCTION batchseg_attempt_seconds() RETURNS trigger LANGUAGE plpgsql AS $$\n"
                   f"BEGIN\n  {_ADD_ATTEMPT_SECONDS}\n  RETURN NULL;\nEND $$",
                   f"DROP TRIGGER IF EXISTS {_ATTEMPT_TRIGGER} ON history",
                   f"CREATE TRIGGER {_ATTEMPT_TRIGGER} AFTER INSERT ON history FOR EACH ROW WHEN ({_IS_ATTEMPT_END}) "
                   "EXECUTE FUNCTION batchseg_attempt_seconds()"),
}


def attempt_seconds_ddl(dialect_name: str) -> tuple[str, ...]:
    """The statements that install the attempt-seconds trigger (idempotent)."""
    return _ATTEMPT_SECONDS_DDL[dialect_name]


# `init`'s bulk insert on SQLite (Ledger.add_studies): these triggers fire on every inserted row, and cost more
# than the insert itself (a million studies: 60 s of 100). The bulk insert drops them, inserts, adds the counters
# from the rows it inserted (`added_counts`) and makes them again, all in its one transaction under the write lock:
# no other writer can slip a row past them, and a crash leaves the ledger and its triggers as they were.
# The history rows it inserts are `added` events, which change no counter (claims: `claimed`; retried: `failed`,
# `lost`) and no attempt seconds (no duration).
SQLITE_INSERT_TRIGGERS = (*(name for name, on, _, _ in _SQLITE if on.startswith("INSERT ")), _ATTEMPT_TRIGGER)
ADD = "INSERT INTO counts (name, n) VALUES (?, ?) ON CONFLICT (name) DO UPDATE SET n = n + excluded.n"


def added_counts(states: dict[tuple[str, str | None], int]) -> dict[str, int]:
    """The counters' increments for inserted studies, from {(state, error class): studies}: what the insert
    triggers would have added."""
    out: dict[str, int] = {}
    for (state, error_class), n in states.items():
        out[f"state:{state}"] = out.get(f"state:{state}", 0) + n
        if state in PROBLEM_STATES:
            group = f"{state}:{'unknown' if error_class is None else error_class}"   # coalesce, as the trigger
            out[group] = out.get(group, 0) + n
    return out


SQLITE_TRIGGERS = tuple(
    statement for name, on, when, body in _SQLITE for statement in (
        f"DROP TRIGGER IF EXISTS {name}",
        f"CREATE TRIGGER {name} AFTER {on}" + (f" WHEN {when}" if when else "") + " BEGIN\n  "
        + "\n  ".join(body) + "\nEND"))

POSTGRESQL_TRIGGERS = (
    # Inserts come in bulk (init adds a million studies): one statement-level trigger per INSERT or COPY.
    """CREATE OR REPLACE FUNCTION batchseg_counts_studies_insert() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO count_deltas (name, delta)
    SELECT 'state:' || state, count(*) FROM new_rows GROUP BY state
    UNION ALL
    SELECT state || ':' || coalesce(error_class, 'unknown'), count(*) FROM new_rows
    WHERE state IN ('failed', 'skipped') GROUP BY state, coalesce(error_class, 'unknown');
  RETURN NULL;
END $$""",
    # State changes come one row at a time (claims, outcomes); heartbeats never fire this.
    """CREATE OR REPLACE FUNCTION batchseg_counts_studies_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO count_deltas (name, delta) VALUES ('state:' || OLD.state, -1);
  IF OLD.state IN ('failed', 'skipped') THEN
    INSERT INTO count_deltas (name, delta) VALUES (OLD.state || ':' || coalesce(OLD.error_class, 'unknown'), -1);
  END IF;
  IF TG_OP = 'UPDATE' THEN
    INSERT INTO count_deltas (name, delta) VALUES ('state:' || NEW.state, 1);
    IF NEW.state IN ('failed', 'skipped') THEN
      INSERT INTO count_deltas (name, delta) VALUES (NEW.state || ':' || coalesce(NEW.error_class, 'unknown'), 1);
    END IF;
  END IF;
  RETURN NULL;
END $$""",
    """CREATE OR REPLACE FUNCTION batchseg_counts_history_insert() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO count_deltas (name, delta)
    SELECT 'claims', count(*) FROM new_rows WHERE event = 'claimed' HAVING count(*) > 0
    UNION ALL
    SELECT 'retried', count(*) FROM (
      SELECT study_id, min(id) AS first FROM new_rows
      WHERE event IN ('failed', 'lost') AND to_state = 'pending' GROUP BY study_id) AS n
    WHERE NOT EXISTS (SELECT 1 FROM history h WHERE h.study_id = n.study_id AND h.id < n.first
                      AND h.event IN ('failed', 'lost') AND h.to_state = 'pending')
    HAVING count(*) > 0;
  RETURN NULL;
END $$""",
    "DROP TRIGGER IF EXISTS counts_studies_insert ON studies",
    "CREATE TRIGGER counts_studies_insert AFTER INSERT ON studies REFERENCING NEW TABLE AS new_rows "
    "FOR EACH STATEMENT EXECUTE FUNCTION batchseg_counts_studies_insert()",
    "DROP TRIGGER IF EXISTS counts_studies_update ON studies",
    "CREATE TRIGGER counts_studies_update AFTER UPDATE OF state, error_class ON studies FOR EACH ROW "
    "WHEN (OLD.state IS DISTINCT FROM NEW.state OR OLD.error_class IS DISTINCT FROM NEW.error_class) "
    "EXECUTE FUNCTION batchseg_counts_studies_change()",
    "DROP TRIGGER IF EXISTS counts_studies_delete ON studies",
    "CREATE TRIGGER counts_studies_delete AFTER DELETE ON studies FOR EACH ROW "
    "EXECUTE FUNCTION batchseg_counts_studies_change()",
    "DROP TRIGGER IF EXISTS counts_history_insert ON history",
    "CREATE TRIGGER counts_history_insert AFTER INSERT ON history REFERENCING NEW TABLE AS new_rows "
    "FOR EACH STATEMENT EXECUTE FUNCTION batchseg_counts_history_insert()",
)


def trigger_ddl(dialect_name: str) -> tuple[str, ...]:
    """The statements that install the counting triggers (idempotent: each drops its old version first)."""
    return {"sqlite": SQLITE_TRIGGERS, "postgresql": POSTGRESQL_TRIGGERS}[dialect_name]


def folds(dialect_name: str) -> bool:
    """Whether this dialect's triggers leave deltas that writers fold into the counters."""
    return dialect_name == "postgresql"


def decode(rows: list[tuple[str, int]]) -> dict[str, int]:
    return {str(name): int(n) for name, n in rows}


def problem_groups(counted: dict[str, int]) -> list[tuple[str, str, int]]:
    """(state, error class, count) of every failed and skipped group that holds studies."""
    out = []
    for name, n in counted.items():
        state, _, error_class = name.partition(":")
        if state in PROBLEM_STATES and n > 0:
            out.append((state, error_class, n))
    return out
