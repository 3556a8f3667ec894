"""The PostgreSQL fast path opens psycopg's connections itself: a URL must reach the server as
it did through SQLAlchemy's psycopg dialect, which reads URLs its own way (a '/' in a
password, '+' as a space in options, several hosts)."""

from __future__ import annotations

import pytest
import sqlalchemy

from hparam_search.storage.postgres import connect_kwargs

pytest.importorskip("psycopg")


@pytest.mark.parametrize("url", [
    "postgresql+psycopg://u:ab/cd@h:5432/db",
    "postgresql+psycopg://u:p%40ss@h/db?sslmode=require&options=-c+search_path%3Dx",
    "postgresql+psycopg://u@/db?host=/var/run/postgresql",
    "postgresql+psycopg://u@/db?host=h1:5432&host=h2:5433",
    "postgresql+psycopg://u@/db?host=h1:5433",
    "postgresql+psycopg://u@/db?host=h1,h2&port=1,2",
    "postgresql+psycopg://[::1]:5432/db",
    "postgresql+psycopg://postgres@127.0.0.1:55432/dev?connect_timeout=10",
])
def test_a_url_reaches_psycopg_as_sqlalchemy_would_pass_it(url: str) -> None:
    engine = sqlalchemy.create_engine(url)
    theirs = engine.dialect.create_connect_args(engine.url)[1]
    engine.dispose()
    # Not connection settings: SQLAlchemy's type adapters and its client encoding (none set).
    theirs = {k: v for k, v in theirs.items() if k not in ("context", "client_encoding")}
    assert connect_kwargs(url) == theirs
