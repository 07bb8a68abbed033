#!/usr/bin/env bash
# Set up a Cloud TPU VM, or every worker of a TPU pod slice, for safedpo_jax; check that
# every worker sees its TPU devices; print the commands that launch a paper experiment.
#
#   ./tpu_setup.sh --tpu NAME --zone ZONE [--project P]     # a slice, from your machine
#   ./tpu_setup.sh                                           # on a single TPU VM itself
#
# Options:
#   --tpu NAME        the TPU VM / slice (every command runs on --worker=all through
#                     `gcloud compute tpus tpu-vm ssh`); without it, runs here
#   --zone ZONE       its zone (needed with --tpu)
#   --project P       its Google Cloud project (default: gcloud's configured one)
#   --repo URL        the git repository to clone (default: this checkout's origin)
#   --branch B        the branch to check out (default: main)
#   --dir DIR         the checkout on each worker, relative to the home directory
#                     (default: safedpo_jax); its virtual environment is DIR/.venv
#   --config NAME     the experiment of the printed launch command (default: alpaca7b_methods)
#   --runs-dir DIR    where runs go in the printed launch command; on a slice it must be a
#                     directory every worker sees (NFS/Filestore, gcsfuse) (default: runs/paper)
#   --dry-run         print every command instead of running it
#
# Idempotent: an existing checkout is fast-forwarded, an existing .venv reused, and the
# editable install (pip install -e ".[tpu]") only adds what is missing. The environment
# needs Python >= 3.12: the first of python3.13, python3.12, python3 that is new enough,
# else a Python 3.12 that uv (installed with pip --user) provides.
set -euo pipefail

tpu=""
zone=""
project=""
repo=""
branch="main"
dir="safedpo_jax"
config="alpaca7b_methods"
runs_dir="runs/paper"
dry_run=0

usage() {
  sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
  exit "${1:-0}"
}

while [[ $# -gt 0 ]]; do
  case "$1" in
    --tpu) tpu="$2"; shift 2 ;;
    --zone) zone="$2"; shift 2 ;;
    --project) project="$2"; shift 2 ;;
    --repo) repo="$2"; shift 2 ;;
    --branch) branch="$2"; shift 2 ;;
    --dir) dir="$2"; shift 2 ;;
    --config) config="$2"; shift 2 ;;
    --runs-dir) runs_dir="$2"; shift 2 ;;
    --dry-run) dry_run=1; shift ;;
    -h|--help) usage 0 ;;
    *) echo "tpu_setup.sh: unknown argument $1" >&2; usage 2 ;;
  esac
done

if [[ -n "$tpu" && -z "$zone" ]]; then
  echo "tpu_setup.sh: --tpu needs --zone" >&2
  exit 2
fi
if [[ -z "$repo" ]]; then
  here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
  repo="$(git -C "$here" remote get-url origin 2>/dev/null || true)"
  if [[ -z "$repo" ]]; then
    if [[ "$dry_run" == 1 ]]; then
      repo="REPO_URL"
    else
      echo "tpu_setup.sh: this checkout has no origin remote; give --repo URL" >&2
      exit 2
    fi
  fi
fi

# `gcloud compute tpus tpu-vm ssh NAME --zone Z [--project P]`, as an array.
ssh_cmd=(gcloud compute tpus tpu-vm ssh "$tpu" --zone "$zone")
if [[ -n "$project" ]]; then
  ssh_cmd+=(--project "$project")
fi

# Runs a bash script on every worker (or here, without --tpu); prints it with --dry-run.
on_workers() {
  local title="$1" script="$2" command
  echo "== $title"
  if [[ -n "$tpu" ]]; then
    command="bash -c $(printf '%q' "$script")"
    if [[ "$dry_run" == 1 ]]; then
      # shellcheck disable=SC2016  # $SCRIPT is literal text of the printed plan
      printf '%s --worker=all --command "bash -c \\"$SCRIPT\\"", SCRIPT:\n' "${ssh_cmd[*]}"
      printf '%s\n' "$script" | sed 's/^/    | /'
    else
      "${ssh_cmd[@]}" --worker=all --command "$command"
    fi
  elif [[ "$dry_run" == 1 ]]; then
    printf '%s\n' "$script" | sed 's/^/    | /'
  else
    (cd "$HOME" && bash -c "$script")
  fi
}

q_repo="$(printf '%q' "$repo")"
q_branch="$(printf '%q' "$branch")"
q_dir="$(printf '%q' "$dir")"

# 1. The code: clone, or fast-forward an existing checkout.
on_workers "clone or update $repo ($branch) into ~/$dir" "set -euo pipefail
cd \"\$HOME\"
if [[ -d $q_dir/.git ]]; then
  git -C $q_dir fetch --quiet origin $q_branch
  git -C $q_dir checkout --quiet $q_branch
  git -C $q_dir merge --ff-only --quiet origin/$q_branch
else
  git clone --quiet --branch $q_branch $q_repo $q_dir
fi
echo \"\$(hostname): \$(git -C $q_dir log --oneline -1)\""

# 2. Python >= 3.12, the virtual environment, the package with JAX's TPU extra.
on_workers "create or reuse ~/$dir/.venv (Python >= 3.12); pip install -e \".[tpu]\"" "set -euo pipefail
cd \"\$HOME\"/$q_dir
if [[ ! -x .venv/bin/python ]]; then
  py=''
  for candidate in python3.13 python3.12 python3; do
    if command -v \"\$candidate\" >/dev/null &&
       \"\$candidate\" -c 'import sys; sys.exit(sys.version_info < (3, 12))'; then
      py=\"\$candidate\"; break
    fi
  done
  if [[ -n \"\$py\" ]]; then
    \"\$py\" -m venv .venv
  else
    python3 -m pip install --user --quiet uv
    \"\$HOME\"/.local/bin/uv venv --quiet --seed --python 3.12 .venv
  fi
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e '.[tpu]'
echo \"\$(hostname): \$(.venv/bin/python --version), jax \$(.venv/bin/python -c 'import jax; print(jax.__version__)')\""

# 3. Every worker sees its devices: all processes join jax.distributed (on a slice) and
#    each reports its local and the global device count.
check_py='import jax
if DISTRIBUTED:  # before any other use of jax; finds the other workers by itself
    jax.distributed.initialize()
n, local, procs = jax.device_count(), jax.local_device_count(), jax.process_count()
print(f"process {jax.process_index()}/{procs}: {local} local of {n} devices, "
      f"{jax.devices()[0].device_kind} ({jax.default_backend()})")
assert jax.default_backend() == "tpu", "JAX does not see a TPU"
assert n == local * procs, "some worker sees a different number of devices"'
if [[ -n "$tpu" ]]; then
  check_py="${check_py/DISTRIBUTED/True}"
else
  check_py="${check_py/DISTRIBUTED/False}"
fi
on_workers "check that every worker sees its TPU devices (jax.distributed.initialize)" "set -euo pipefail
cd \"\$HOME\"/$q_dir
.venv/bin/python - <<'PY'
$check_py
PY"


# 4. How to launch an experiment.
train="cd ~/$dir && .venv/bin/python experiments/paper/run.py $config --runs-dir $runs_dir"
echo "== launch"
if [[ -n "$tpu" ]]; then
  cat <<EOF
Training (SFT where the config has one, then every preference run) on all workers at once;
each worker runs the same command with --distributed true, and the global batch is split
over the hosts. $runs_dir must be a directory that every worker sees:

  ${ssh_cmd[*]} --worker=all --command '$train --distributed'

Then the evaluation, on one worker:

  ${ssh_cmd[*]} --worker=0 --command '$train --stages evaluate'
EOF
else
  cat <<EOF
On this TPU VM (one host; every stage, evaluation included):

  $train
EOF
fi
