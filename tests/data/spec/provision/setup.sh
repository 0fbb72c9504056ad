#!/bin/sh
# a provision step of the everything example: the file must exist to load it
set -eu
echo "set up $(hostname)"
