#!/bin/bash
# errors.txt must hold the count of ERROR-level lines of the pristine log.
set -e
test -f /work/errors.txt || { echo "errors.txt is missing"; exit 1; }
expected=3
actual=$(tr -d '[:space:]' < /work/errors.txt)
if [ "$actual" != "$expected" ]; then echo "errors.txt says '$actual', expected $expected"; exit 1; fi
echo "ok"
