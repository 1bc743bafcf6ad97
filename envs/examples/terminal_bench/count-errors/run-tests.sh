#!/bin/bash
set -e
bash "$TEST_DIR/check.sh"
