"""Fixtures of the cluster-profile tests: real PostgreSQL and Redis on loopback, skipped when absent.

Each test gets its own database (a unique name, dropped afterwards), so runs never see each other's rows.
"""

from __future__ import annotations

import pytest

from infra.cluster import servers


@pytest.fixture(scope="session")
def postgres() -> str:
    """The PostgreSQL admin URL (HATCHERY_PG_ADMIN_URL, default postgresql://postgres@127.0.0.1:5432/postgres)."""
    reason = servers.postgres_unreachable()
    if reason:
        pytest.skip(f"PostgreSQL is not reachable: {reason}")
    return servers.admin_url()


@pytest.fixture(scope="session")
def redis_url() -> str:
    reason = servers.redis_unreachable()
    if reason:
        pytest.skip(f"Redis is not reachable: {reason}")
    return servers.redis_url()


@pytest.fixture
def pg_database(postgres: str):
    """A fresh database's URL, dropped after the test."""
    name = servers.create_database("hatchery_test")
    try:
        yield servers.database_url(name)
    finally:
        servers.drop_database(name)
