"""URLs and messages lose their secrets before they are shown or stored."""

from __future__ import annotations

from storage.redact import MASK, redact_text, redact_url


def test_a_database_url_keeps_its_user_and_host_but_not_its_password():
    url = "postgresql+psycopg://app:hunter2@db.internal:5432/foundry"
    assert redact_url(url) == f"postgresql+psycopg://app:{MASK}@db.internal:5432/foundry"


def test_secret_query_values_are_masked_and_others_kept():
    url = "postgresql://db/foundry?password=hunter2&sslmode=require&api_token=abc"
    redacted = redact_url(url)
    assert "hunter2" not in redacted and "abc" not in redacted
    assert "sslmode=require" in redacted


def test_a_password_inside_a_nested_endpoint_url_is_masked():
    url = "s3://bucket/prefix?endpoint_url=http://user:SECRET@127.0.0.1:8333"
    redacted = redact_url(url)
    assert "SECRET" not in redacted
    assert "127.0.0.1:8333" in redacted and "bucket/prefix" in redacted


def test_every_url_in_an_error_message_is_redacted():
    message = (
        "could not reach http://user:SECRET@host:8333/bucket (timeout); "
        "database postgresql://app:pw@db/x refused"
    )
    redacted = redact_text(message)
    assert "SECRET" not in redacted and ":pw@" not in redacted
    assert redacted.startswith("could not reach http://user:")
    assert "(timeout)" in redacted


def test_text_without_urls_is_unchanged():
    assert redact_text("refine failed: out of memory") == "refine failed: out of memory"
    assert redact_url("/local/path/foundry.db") == "/local/path/foundry.db"


def test_a_url_without_secrets_is_unchanged():
    url = "file:///data/objects"
    assert redact_url(url) == url
    assert redact_url("sqlite:////tmp/foundry.db") == "sqlite:////tmp/foundry.db"
