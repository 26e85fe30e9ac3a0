"""tests/pg needs a real PostgreSQL: BATCHSEG_TEST_PG_URL (scripts/local-postgres.sh start sets it)."""
from __future__ import annotations

import os

import pytest

URL = os.environ.get("BATCHSEG_TEST_PG_URL")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if URL:
        return
    if os.environ.get("BATCHSEG_REQUIRE_PG"):
        raise pytest.UsageError("BATCHSEG_REQUIRE_PG is set but BATCHSEG_TEST_PG_URL is not: start PostgreSQL first")
    skip = pytest.mark.skip(reason="no PostgreSQL: run `eval \"$(bash scripts/local-postgres.sh start)\"`")
    for item in items:
        if "tests/pg/" in str(item.fspath).replace(os.sep, "/"):
            item.add_marker(skip)


@pytest.fixture
def pg_url() -> str:
    from sqlalchemy import create_engine

    from batchseg.ledger import metadata

    assert URL
    engine = create_engine(URL)
    metadata.drop_all(engine)  # every test starts from an empty ledger
    engine.dispose()
    return URL
