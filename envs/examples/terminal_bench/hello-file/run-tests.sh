#!/bin/bash
# Runs after the agent, in a pristine copy of its work dir; TEST_DIR holds the tests.
set -e
python3 "$TEST_DIR/test_outputs.py"
