#!/usr/bin/env bash
# Mutation testing of manage_images.py's pure core with mutmut 3 (slow: not
# part of .ci/run). See tests/MUTATION.md for the score and the survivors.
#
#   python3 -m pip install -e '.[test,mutation]'
#   bash tests/mutation.sh [SCRATCH_DIR [FUNCTION...]]   (FUNCTION...: only those, e.g. to recheck survivors)
#
# mutmut 3 wants the module importable under the name its path gives, so the
# run happens in a scratch copy: src/manage_images.py and the in-process tests.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
work=${1:-$(mktemp -d /tmp/manage-images-mutation.XXXXXX)}
python=${PYTHON:-$here/.venv/bin/python}
mkdir -p "$work/src" "$work/tests"
cp "$here/build_tools/docker/manage_images.py" "$work/src/"
cp "$here/README.md" "$work/"
# fake_tree reads the real CI jobs from build_tools/kokoro; the tests that
# run the tool as a process of its own (standin.environ's PYTHONPATH) find
# the module where the real tree has it.
mkdir -p "$work/build_tools/docker"
cp -r "$here/build_tools/kokoro" "$work/build_tools/"
cp "$here/build_tools/docker/manage_images.py" "$work/build_tools/docker/"
for file in conftest.py helpers.py fake_tree.py standin.py registry.py \
            test_manage_images.py test_scheduler.py test_check.py test_guarantees.py \
            test_core.py test_cost.py test_presubmit.py test_reproduce.py \
            test_grammar.py test_new_image.py test_progress.py; do
  cp "$here/tests/$file" "$work/tests/"
done
cat > "$work/pyproject.toml" <<'TOML'
[tool.pytest.ini_options]
pythonpath = ["src", "tests"]
testpaths = ["tests"]
addopts = "-p no:cacheprovider -m 'not e2e'"
markers = ["e2e: end-to-end"]

[tool.mutmut]
source_paths = ["src"]
pytest_add_cli_args_test_selection = ["tests"]
also_copy = ["README.md", "build_tools"]
TOML
cd "$work"
# The pure core: graph order, references, WORKSPACE, prod_digests.txt, Edits, the scheduler,
# and the progress view's arithmetic (the estimate, durations, the rendered lines).
core=(
  validate_graph dependents_map ordered_images_to_process expand_selection
  reference_scanner find_references _reference pinned_names parse_reference 'Reference'
  digest_hexes reference_splices apply_splices _slice new_blocks 'FileChange'
  check_digest line_at 'LineCounter'
  _line_starts _literal_span _rbe_rule parse_rbe_rules rules_naming rewrite_workspace workspace_findings
  parse_prod_digests usable_prod_digests prod_digest_findings append_prod_digest
  'Edits' run_graph _finished _with_the_rest
  resolve_progress expected_costs remaining_images estimate_left format_duration format_left fit
  render_view failure_tail
)
if [ $# -gt 1 ]; then core=("${@:2}"); fi
patterns=()
for name in "${core[@]}"; do
  case "$name" in
    [A-Z]*) patterns+=("manage_images.xǁ${name}ǁ*") ;;
    *) patterns+=("manage_images.x_${name}__mutmut_*") ;;
  esac
done
MANAGE_IMAGES_SCRIPT="$work/src/manage_images.py" "$python" -m mutmut run "${patterns[@]}" || true
"$python" -m mutmut results --all true > results.txt || "$python" -m mutmut results > results.txt
"$python" - "${core[@]}" <<'PY'
import re, sys
core = sys.argv[1:]
counts = {}
survivors = []
for line in open("results.txt"):
    match = re.match(r"\s*(manage_images\.\S+): (.+)", line)
    if not match:
        continue
    name, status = match.groups()
    if not any(f"x_{c}__mutmut_" in name or f"xǁ{c}ǁ" in name for c in core):
        continue
    counts[status] = counts.get(status, 0) + 1
    if status == "survived":
        survivors.append(name)
total = sum(counts.values())
killed = counts.get("killed", 0) + counts.get("timeout", 0)
print(f"mutants: {total}, {counts}")
print(f"score: {killed}/{total} = {100 * killed / max(total, 1):.1f}% killed")
print("survivors:", *survivors, sep="\n  ")
if killed + len(survivors) == 0:
    sys.exit("no mutant was checked: see the errors above")
PY
echo "scratch: $work (mutmut show NAME there shows a mutant)"
