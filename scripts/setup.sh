#!/usr/bin/env bash
# One-time (idempotent, fast when already done) set-up of a fresh Debian machine for tessera:
# apt packages the build needs, a project venv with torch==2.11.0 (the libtorch that tch 0.24
# links against), the .libtorch link read by .cargo/config.toml, and a libnccl.so link that
# cudarc's dynamic loader can find.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
TORCH_VERSION=2.11.0
# prometheus: promtool checks a live job's /metrics, the repo's rules and scrape config, and a
# real Prometheus server evaluates the board and the alerts (tests/metrics.rs).
# tmux: `tessera top` runs in a real 80x24 terminal in tests/top.rs.
# protobuf-compiler: etcd-client's build runs protoc. etcd-server: the real etcd (3.4) that the
# cluster-mode tests start; etcd-client: etcdctl, which reaches it from inside a test's network
# namespaces. iproute2: `ip netns` for the multi-host tests. openssl: the etcd TLS tests make
# their CA and certificates with it (coordinator/tests/common/etcd.rs).
# munge slurmctld slurmd slurm-client: a real one-node Slurm cluster (munged, slurmctld, slurmd,
# sbatch/srun/scontrol) runs scripts/cluster/tessera.sbatch in tests/slurm.rs; the test starts
# the daemons itself, on its own key, config and ports (the packages' services stay unused).
# openssl: tests/cluster_tls.rs makes its CA and server certificate with the command-line tool.
APT_PACKAGES=(protobuf-compiler prometheus tmux etcd-server etcd-client iproute2 munge slurmctld slurmd slurm-client openssl)

log() { printf '[setup] %s\n' "$*" >&2; }

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if ((${#missing[@]})); then
  log "apt: installing ${missing[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  log "creating .venv"
  "$PY" -m venv .venv
fi
if ! .venv/bin/python -c "import torch,sys; sys.exit(0 if torch.__version__.split('+')[0]=='$TORCH_VERSION' else 1)" 2>/dev/null; then
  log "pip: installing torch==$TORCH_VERSION into .venv (about 2 minutes, 5 GB)"
  .venv/bin/pip install -q --no-cache-dir --disable-pip-version-check "torch==$TORCH_VERSION"
fi

SITE=$(.venv/bin/python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
# The peers' benchmark scripts (../shared/peers, e.g. gloo_allreduce.py) need numpy beside torch.
if ! .venv/bin/python -c "import numpy" 2>/dev/null; then
  log "pip: installing numpy into .venv (for the peer benchmark scripts)"
  .venv/bin/pip install -q --no-cache-dir --disable-pip-version-check numpy
fi
ln -sfn "$SITE/torch" .libtorch

# cudarc looks for libnccl.so, the pip wheel ships only libnccl.so.2.
mkdir -p .lib
if [ -f "$SITE/nvidia/nccl/lib/libnccl.so.2" ]; then
  ln -sfn "$SITE/nvidia/nccl/lib/libnccl.so.2" .lib/libnccl.so
fi
log "ready: libtorch at $ROOT/.libtorch -> $SITE/torch"
