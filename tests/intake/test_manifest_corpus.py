"""The bad-manifest corpus: each case gives its own clear reason at the right line, and the
valid rows in the same file survive (tests/data/bad_manifests/README.md lists the cases)."""

from __future__ import annotations

from pathlib import Path

import pytest

from intake.parse import parse_manifest

CORPUS = Path(__file__).resolve().parents[1] / "data" / "bad_manifests"
URLS_ON = {"allow_urls": True, "url_hosts": ["assets.example.com"]}

# (file, reason substring, line of that rejection, valid requests that must survive, options)
CASES = [
    ("empty.yaml", "manifest file is empty", 0, 0, {}),
    ("huge_seed.yaml", "a number with 5000 digits is too large", 2, 1, {}),
    ("huge_seed.jsonl", "a number with 5000 digits is too large", 1, 1, {}),
    ("huge_seed.csv", "a number with 5000 digits is too large", 2, 1, {}),
    ("latin1.yaml", "not UTF-8", 3, 0, {}),
    ("unknown_format.txt", "unknown manifest format '.txt'", 0, 0, {}),
    ("unknown_key.yaml", "unknown key 'colour'", 3, 1, {}),
    ("unknown_top_level.yaml", "unknown top-level key 'version'", 1, 1, {}),
    ("prompt_and_image.yaml", "has both 'prompt' and 'image'", 3, 1, {}),
    ("neither.yaml", "needs one of 'prompt', 'image', 'bundle' or 'mesh'", 3, 1, {}),
    ("huge_prompt.jsonl", "more than the limit of 1000", 2, 1, {}),
    ("control_chars.jsonl", "non-printable character (U+0007)", 1, 1, {}),
    ("empty_prompt.jsonl", "prompt is empty", 1, 1, {}),
    ("negative_seed.yaml", "seed: Input should be greater than or equal to 0", 4, 1, {}),
    ("seed_string.jsonl", "seed: Input should be a valid integer (got '5')", 2, 1, {}),
    ("variants_zero.yaml", "variants: Input should be greater than or equal to 1", 2, 2, {}),
    ("variants_too_many.yaml", "variants: Input should be less than or equal to 64", 3, 1, {}),
    ("path_traversal.yaml", "is outside the manifest folder", 3, 1, {}),
    ("absolute_outside.yaml", "is outside the manifest folder", 2, 1, {}),
    ("symlink_escape.yaml", "is a symlink that leads outside", 4, 1, {}),
    ("missing_image.yaml", "image file not found", 2, 1, {}),
    ("corrupt_png.yaml", "image cannot be decoded", 3, 1, {}),
    ("not_an_image.yaml", "not a PNG, JPEG or WebP image", 2, 1, {}),
    ("huge_header.yaml", "40000 x 40000", 2, 1, {}),
    ("bundle_wrong_aspect.yaml", "bundle must be twice as wide as high", 2, 1, {}),
    ("duplicate_ids.jsonl", "duplicate id 'chair' (first used on line 1)", 3, 2, {}),
    ("duplicate_key.yaml", "duplicate key 'prompt'", 3, 1, {}),
    ("yaml_bomb.yaml", "anchors and aliases", 10, 1, {}),
    ("yaml_anchor_defaults.yaml", "anchors and aliases", 2, 0, {}),
    ("yaml_syntax.yaml", "YAML syntax error", 5, 0, {}),
    ("yaml_not_mapping.yaml", "must be a mapping with an 'items:' list", 1, 0, {}),
    ("yaml_python_tag.yaml", "python/object/apply", 3, 1, {}),
    ("non_dict_item.yaml", "item must be a mapping of keys to values, got str", 2, 1, {}),
    ("ragged.csv", "CSV row has 4 fields but the header (line 1) has 3 columns", 3, 2, {}),
    ("csv_unknown_column.csv", "unknown CSV column(s) ['colour']", 1, 0, {}),
    ("csv_bad_seed.csv", "seed: Input should be a valid integer (got 'seven')", 3, 1, {}),
    ("csv_bad_params.csv", "params is not valid JSON", 3, 1, {}),
    ("bad_json_line.jsonl", "invalid JSON at column", 2, 2, {}),
    ("nan_param.jsonl", "NaN is not a valid JSON number", 1, 1, {}),
    ("params_not_dict.jsonl", "params must be a mapping", 2, 1, {}),
    ("params_nested.jsonl", "param 'steps' must be a string, number or boolean", 1, 1, {}),
    ("unknown_param.yaml", "unknown refine parameter 'stpes' (did you mean", 4, 1, {}),
    ("param_out_of_range.jsonl", "bundle parameter 'tile' must be within 32..2048, got 8192",
     2, 1, {}),
    ("param_for_another_generator.yaml",
     "parameter 'steps' is read by generator 'kiss3dgen' only", 5, 1, {}),
    ("tags_not_list.yaml", "tags must be a list of strings", 4, 1, {}),
    ("http_url.yaml", "URL scheme 'http' is not allowed", 2, 1, {}),
    ("url_not_allowed.yaml", "image URLs are not allowed", 2, 1, {}),
    ("disallowed_host.yaml", "host 'evil.example.net' is not an allowed host", 4, 1, URLS_ON),
    ("bad_s3_ref.yaml", "must be s3://bucket/key", 2, 1, {}),
    ("unknown_generator.yaml",
     "generator: Input should be 'library', 'kiss3dgen', 'file', 'kiss3dgen-mesh' or "
     "'kiss3dgen-image'", 2, 1, {}),
    ("file_generator_with_prompt.yaml", "generator 'file' needs a 'bundle'", 2, 1, {}),
    ("bad_id.yaml", "id '../../etc' must be", 2, 1, {}),
    ("bad_defaults.yaml", "defaults: seed: Input should be greater than or equal to 0", 2, 0, {}),
    ("bundle_tiny_tiles.yaml", "bundle tiles are 1 px, less than the minimum of 64 px", 3, 1, {}),
    ("sidecar_symlink.yaml", "sidecar path 'sidecar_link.json' is a symlink that leads outside",
     4, 1, {}),
    ("sidecar_list.yaml", "sidecar must be a JSON object, got a JSON list", 3, 1, {}),
    ("sidecar_wrong_type.yaml", "sidecar 'tile' must be an integer, got a JSON string", 3, 1, {}),
    ("nul_in_path.jsonl", "contains a NUL character", 1, 1, {}),
    ("name_too_long.yaml", "cannot be opened: File name too long", 3, 1, {}),
    ("path_too_long.yaml", "image path is 4205 bytes long, more than 4096", 3, 1, {}),
    ("bad_bucket_name.yaml", "'My_Bucket' is not a valid S3 bucket name", 3, 1, {}),
]


@pytest.mark.parametrize(
    "name, reason, line, valid, options", CASES, ids=[case[0] for case in CASES]
)
def test_bad_manifest_gives_its_reason_and_keeps_the_valid_rows(name, reason, line, valid, options):
    path = CORPUS / name
    assert path.exists() or path.is_symlink(), f"corpus file missing: {name}"
    parsed = parse_manifest(path, **options)
    matching = [r for r in parsed.rejected if reason in r.reason]
    assert matching, f"no rejection mentions {reason!r}: {[r.reason for r in parsed.rejected]}"
    assert matching[0].line == line
    assert matching[0].file == str(path)
    assert len(parsed.requests) == valid
    # A valid row is one of ours: every corpus file marks its good rows as such.
    for request in parsed.requests:
        assert request.kind == "image" or "valid" in (request.prompt or "")


def test_corpus_has_at_least_25_cases_and_a_readme_entry_for_each():
    readme = (CORPUS / "README.md").read_text()
    assert len(CASES) >= 25
    for name, *_ in CASES:
        assert f"`{name}`" in readme, f"{name} is not listed in the corpus README"


def test_every_corpus_manifest_is_covered_by_a_case():
    files = {p.name for p in CORPUS.iterdir() if p.is_file() and p.suffix != ".md"}
    assert files == {case[0] for case in CASES}


def test_the_symlink_case_is_really_a_symlink():
    link = CORPUS / "images" / "escape_link.png"
    assert link.is_symlink(), "git lost the symlink: recreate it (see the corpus README)"
    assert link.resolve().exists()
