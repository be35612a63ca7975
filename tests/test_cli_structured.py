"""`edgeinfer run` with --json-schema, --grammar and --reasoning-budget, as a user runs it."""

from __future__ import annotations

import json
import subprocess
import sys

import jsonschema

SCHEMA = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 20}, "age": {"type": "integer"}},
          "required": ["name", "age"], "additionalProperties": False}  # fmt: skip


def _run(smollm2_path, *args, timeout=300):
    cmd = [sys.executable, "-m", "edgeinfer", "run", str(smollm2_path), *args, "--temp", "0", "-c", "512"]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def test_json_schema_and_grammar(smollm2_path, tmp_path):
    r = _run(smollm2_path, "Describe a person as JSON.", "--json-schema", json.dumps(SCHEMA), "-n", "60")
    assert r.returncode == 0, r.stderr
    jsonschema.validate(json.loads(r.stdout), SCHEMA)
    schema_file = tmp_path / "s.json"
    schema_file.write_text(json.dumps(SCHEMA))
    r2 = _run(smollm2_path, "Describe a person as JSON.", "--json-schema", str(schema_file), "-n", "60")
    assert r2.returncode == 0 and r2.stdout == r.stdout
    g = tmp_path / "yn.gbnf"
    g.write_text('root ::= "yes" | "no"\n')
    r = _run(smollm2_path, "Is the sky blue?", "--grammar", str(g), "-n", "5")
    assert r.returncode == 0 and r.stdout.strip() in ("yes", "no"), r.stdout
    bad = tmp_path / "bad.gbnf"
    bad.write_text("root ::= (")
    r = _run(smollm2_path, "x", "--grammar", str(bad))
    assert r.returncode == 1 and "grammar" in r.stderr and "Traceback" not in r.stderr
    r = _run(smollm2_path, "x", "--json-schema", "{not json")
    assert r.returncode == 1 and "json" in r.stderr.lower() and "Traceback" not in r.stderr


def test_reasoning_budget_runs(smollm2_path):
    r = _run(smollm2_path, "Say hi.", "--reasoning-budget", "4", "-n", "12")
    assert r.returncode == 0 and r.stdout.strip() and "Traceback" not in r.stderr
