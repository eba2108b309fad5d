#!/bin/sh
# Build the C record analyzer with AddressSanitizer and UBSan in a scratch
# copy of src/ and run the fuzzing harness against it.
#
#   scripts/fuzz-sanitized.sh                 # the ci budget
#   PCLASSES_HYPOTHESIS_PROFILE=deep scripts/fuzz-sanitized.sh
#
# Any memory error or undefined behaviour aborts the run with a report.
# Needs gcc (or clang) with libasan; PYTHON defaults to the python on PATH.
set -eu
here=$(cd "$(dirname "$0")/.." && pwd)
python=${PYTHON:-python}
work=$(mktemp -d "${TMPDIR:-/tmp}/pclasses-asan.XXXXXX")
trap 'rm -rf "$work"' EXIT
cp -r "$here/src" "$here/setup.py" "$here/pyproject.toml" "$work/"
[ -f "$here/README.md" ] && cp "$here/README.md" "$work/"
find "$work/src" -name '*.so' -delete
cd "$work"
CFLAGS="-fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=all -O1 -g" \
LDFLAGS="-fsanitize=address,undefined" \
    "$python" setup.py -q build_ext --inplace >/dev/null 2>&1
asan=$(${CC:-gcc} -print-file-name=libasan.so)
ubsan=$(${CC:-gcc} -print-file-name=libubsan.so)
cd "$here"
LD_PRELOAD="$asan:$ubsan" ASAN_OPTIONS=detect_leaks=0 PYTHONPATH="$work/src" "$python" -c \
    "import importlib, sys; a = importlib.import_module('pclasses.record.analyze'); sys.exit(0 if a.HAVE_C else 'the C analyzer did not build')"
# Python's own allocations are not instrumented: leaks are not ours to report.
LD_PRELOAD="$asan:$ubsan" \
ASAN_OPTIONS="detect_leaks=0:abort_on_error=1:allocator_may_return_null=1" \
UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1" \
PYTHONPATH="$work/src" \
    "$python" -m pytest -q -p no:cacheprovider proptests/test_fuzz_records.py \
    tests/test_records_hostile.py tests/test_skim.py "$@"
