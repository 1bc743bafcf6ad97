#!/bin/bash
# Runs in the agent's sandbox before the agent starts: writes the data file.
set -e
printf 'region,units,price\nnorth,3,2.50\nsouth,4,1.25\neast,2,4.00\nwest,1,3.00\n' > sales.csv
