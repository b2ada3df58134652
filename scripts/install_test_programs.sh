#!/usr/bin/env bash
# The real programs some tests start on 127.0.0.1 (Debian packages): Orthanc, a PACS (tests/test_pacs.py);
# dicom3tools' dciodvfy, which validates the DICOM SRs we write; Slurm and munge, a one-node cluster
# (tests/test_slurm.py, scripts/slurm_cluster.py). Installs only what is missing; without apt-get it does
# nothing and those tests say what they need.
set -euo pipefail
missing=()
command -v Orthanc >/dev/null || missing+=(orthanc)
command -v dciodvfy >/dev/null || missing+=(dicom3tools)
command -v slurmctld >/dev/null || missing+=(slurm-wlm)
command -v munged >/dev/null || missing+=(munge)
if [ ${#missing[@]} -gt 0 ] && command -v apt-get >/dev/null; then
    sudo=$([ "$(id -u)" = 0 ] || echo sudo)
    $sudo apt-get update -q
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q "${missing[@]}"
fi
