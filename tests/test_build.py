"""The build's patch step (cmake/apply_patches.cmake): patches apply in order; one that does not apply stops
the build and is named."""

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "cmake" / "apply_patches.cmake"
CMAKE = shutil.which("cmake")
pytestmark = pytest.mark.skipif(not CMAKE or not shutil.which("patch"), reason="needs cmake and patch")

GOOD = """--- a/src/a.c
+++ b/src/a.c
@@ -1,3 +1,3 @@
 int a(void) {
-    return 1;
+    return 2;
 }
"""
SECOND = """--- a/src/a.c
+++ b/src/a.c
@@ -1,3 +1,3 @@
 int a(void) {
-    return 2;
+    return 3;
 }
"""
BAD = """--- a/src/a.c
+++ b/src/a.c
@@ -1,3 +1,3 @@
 int a(void) {
-    return 42;
+    return 43;
 }
"""


def run(tree, patches):
    return subprocess.run([CMAKE, f"-DSRC={tree}", f"-DPATCHES={';'.join(map(str, patches))}", "-P", str(SCRIPT)],
                          capture_output=True, text=True)


@pytest.fixture
def tree(tmp_path):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "a.c").write_text("int a(void) {\n    return 1;\n}\n")
    return tmp_path


def test_patches_apply_in_order(tree, tmp_path):
    p1, p2 = tmp_path / "0001-good.patch", tmp_path / "0002-second.patch"
    p1.write_text(GOOD)
    p2.write_text(SECOND)
    r = run(tree, [p1, p2])
    assert r.returncode == 0, r.stderr
    assert "return 3;" in (tree / "src" / "a.c").read_text()


def test_failing_patch_is_named(tree, tmp_path):
    p1, p2 = tmp_path / "0001-good.patch", tmp_path / "0002-stale.patch"
    p1.write_text(GOOD)
    p2.write_text(BAD)
    r = run(tree, [p1, p2])
    assert r.returncode != 0
    assert "0002-stale.patch does not apply" in r.stderr


def test_shipped_patches_are_well_formed():
    # Each file's diff has ---/+++ headers, and every hunk holds exactly the lines its @@ header counts
    # (what `patch` checks before it applies anything; a hand-edited hunk gets this wrong first).
    import re

    hunk = re.compile(r"^@@ -\d+(?:,(\d+))? \+\d+(?:,(\d+))? @@")
    for p in sorted((ROOT / "patches").glob("*.patch")):
        lines = p.read_text().splitlines()
        files = [i for i, line in enumerate(lines) if line.startswith("--- a/")]
        assert files and all(lines[i + 1].startswith("+++ b/") for i in files), p.name
        n_hunks = 0
        i = 0
        while i < len(lines):
            m = hunk.match(lines[i])
            if not m:
                i += 1
                continue
            n_hunks += 1
            old, new = int(m.group(1) or 1), int(m.group(2) or 1)
            i += 1
            while old > 0 or new > 0:
                line = lines[i]
                if line.startswith("\\"):  # "\ No newline at end of file"
                    i += 1
                    continue
                assert line[:1] in (" ", "-", "+", ""), f"{p.name}:{i + 1}: {line[:40]!r}"
                old -= line[:1] in (" ", "-", "")
                new -= line[:1] in (" ", "+", "")
                i += 1
            assert old == 0 and new == 0, f"{p.name}: hunk before line {i + 1} miscounted"
        assert n_hunks >= len(files), p.name
