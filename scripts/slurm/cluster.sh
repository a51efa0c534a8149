#!/usr/bin/env bash
# A one-node SLURM cluster on this machine: `cluster.sh up` installs slurm-wlm and munge when missing (apt-get, as
# root), writes slurm.conf into $SLURM_DIR (default outputs/slurm, git-ignored), starts munged, slurmctld and
# slurmd, and waits until sinfo shows the node idle; `cluster.sh down` stops the daemons it started, by their pids.
# `cluster.sh status` prints sinfo. Exit 2 (one line on stderr) where it cannot run: not root, or no apt-get.
set -euo pipefail
REPO="$(cd "$(dirname "$0")/../.." && pwd)"
DIR="$(mkdir -p "${SLURM_DIR:-$REPO/outputs/slurm}" && cd "${SLURM_DIR:-$REPO/outputs/slurm}" && pwd)"
PARTITION="${SLURM_PARTITION:-debug}"
CONF=/etc/slurm/slurm.conf  # where sinfo/sbatch look without SLURM_CONF: a link to $DIR/slurm.conf
MUNGE_SOCKET="$DIR/munge/munge.socket"

say() { echo "slurm: $*" >&2; }
cannot() { say "cannot run a local cluster: $*"; exit 2; }

install() {
    command -v slurmctld >/dev/null && command -v munged >/dev/null && return
    [ "$(id -u)" = 0 ] || cannot "slurm-wlm and munge are missing and installing them needs root"
    command -v apt-get >/dev/null || cannot "slurm-wlm and munge are missing and there is no apt-get"
    say "installing slurm-wlm and munge (apt-get)"
    apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge >/dev/null \
        || cannot "apt-get install slurm-wlm munge failed"
}

write_conf() {
    local mem_mb
    mem_mb=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 1024 ))  # leave 1 GiB to the system
    mkdir -p "$DIR/state" "$DIR/spool" "$DIR/munge"
    sed -e "s|@HOST@|$(hostname -s)|g" -e "s|@DIR@|$DIR|g" -e "s|@CPUS@|$(nproc)|g" -e "s|@MEM_MB@|$mem_mb|g" \
        -e "s|@PARTITION@|$PARTITION|g" -e "s|@CTLD_PORT@|${SLURMCTLD_PORT:-6817}|g" \
        -e "s|@SLURMD_PORT@|${SLURMD_PORT:-6818}|g" "$REPO/scripts/slurm/slurm.conf.in" > "$DIR/slurm.conf"
    if [ -e "$CONF" ] && [ "$(readlink "$CONF")" != "$DIR/slurm.conf" ]; then
        say "$CONF exists and is not ours: export SLURM_CONF=$DIR/slurm.conf before sinfo/sbatch"
    else
        mkdir -p /etc/slurm && ln -sfn "$DIR/slurm.conf" "$CONF"
    fi
}

running() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

up() {
    [ "$(id -u)" = 0 ] || cannot "the daemons run as root here; run as root (or use a real cluster)"
    install
    write_conf
    export SLURM_CONF="$DIR/slurm.conf"
    if ! running "$DIR/munged.pid"; then
        # munged refuses a key or socket dir it finds too open; --force accepts this throwaway setup
        munged --force --socket="$MUNGE_SOCKET" --pid-file="$DIR/munged.pid" --log-file="$DIR/munged.log" \
            --seed-file="$DIR/munge/seed"
    fi
    running "$DIR/slurmctld.pid" || slurmctld -i
    running "$DIR/slurmd.pid" || slurmd
    for _ in $(seq 60); do
        if sinfo -h -N -o %t 2>/dev/null | grep -qxE 'idle|mix|alloc'; then  # up (busy counts)
            say "up: partition $PARTITION, $(nproc) CPUs, config $DIR/slurm.conf"
            sinfo
            return
        fi
        sleep 1
    done
    cannot "the node did not become idle within 60 s (logs: $DIR/slurmctld.log, $DIR/slurmd.log)"
}

down() {
    local name pid
    for name in slurmd slurmctld munged; do  # workers first, then the controller, then authentication
        if running "$DIR/$name.pid"; then
            pid=$(cat "$DIR/$name.pid")
            kill "$pid"
            for _ in $(seq 30); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
            kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
            say "stopped $name ($pid)"
        fi
        rm -f "$DIR/$name.pid"
    done
    [ "$(readlink "$CONF" 2>/dev/null)" = "$DIR/slurm.conf" ] && rm -f "$CONF"
    return 0
}

case "${1:-}" in
    up) up ;;
    down) down ;;
    status) SLURM_CONF="$DIR/slurm.conf" sinfo ;;
    *) echo "usage: $0 up|down|status" >&2; exit 64 ;;
esac
