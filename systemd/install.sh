#!/usr/bin/env bash
# Installs edge as a systemd service on Debian / Raspberry Pi OS, in one go:
#   sudo bash systemd/install.sh
# - system packages it needs (python3-venv, PortAudio, ALSA plugins, and gcc with the
#   Python headers: PyAudio publishes no Linux wheels, pip compiles it);
# - the package and its dependencies (the default model included) into $PREFIX/venv;
# - /etc/edge/edge.toml (kept if present) and /etc/edge/jwt-secret (generated once,
#   root-only; systemd hands it to the service as the credential "jwt-secret");
# - the data key that encrypts the journal and voiceprints, made once: sealed with
#   Clevis to the hospital's Tang server(s) (EDGE_KEY_TANG="URL[ URL...]", with
#   EDGE_KEY_TANG_THP="THUMBPRINT[ ...]" to pin their keys) and/or this board's TPM2
#   (EDGE_KEY_TPM2=1) in /etc/edge/journal-key.jwe; with neither, a plain key file
#   /etc/edge/journal-key (root-only, but on the card: for evaluation only). A drop-in
#   edge.service.d/journal-key.conf hands it to the service as a credential;
# - the unit, with MemoryHigh=/MemoryMax= computed from the config's memory budget,
#   enabled and started.
# Re-running upgrades the package and the unit and keeps config and secret.
# For packaging and tests: PREFIX, ETC, UNIT_DIR move the files; SKIP_APT=1 and
# NO_SYSTEMCTL=1 leave the system's packages and systemd alone (systemd is also left
# alone when it is not running, as in a chroot or a container: the unit is installed,
# not started). tools/arm64-check runs this script in an arm64 Debian 12 root.
set -euo pipefail

SRC=$(cd "$(dirname "$0")/.." && pwd)
PREFIX=${PREFIX:-/opt/edge}
ETC=${ETC:-/etc/edge}
UNIT_DIR=${UNIT_DIR:-/etc/systemd/system}

if [ -z "${SKIP_APT:-}" ]; then
    missing=()
    for pkg in python3-venv python3-dev gcc libc6-dev portaudio19-dev libasound2-plugins \
            alsa-utils; do
        dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
    done
    if [ -n "${EDGE_KEY_TANG:-}${EDGE_KEY_TPM2:-}" ]; then
        for pkg in clevis curl; do dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg"); done
    fi
    if [ -n "${EDGE_KEY_TPM2:-}" ]; then
        dpkg -s clevis-tpm2 >/dev/null 2>&1 || missing+=(clevis-tpm2)
    fi
    if [ "${#missing[@]}" -gt 0 ]; then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
    fi
fi

install -d -m 0755 "$PREFIX"
[ -x "$PREFIX/venv/bin/python" ] || python3 -m venv "$PREFIX/venv"
"$PREFIX/venv/bin/pip" install -q --upgrade ${PIP_ARGS:-} "$SRC"
install -m 0644 "$SRC/README.md" "$PREFIX/README.md"
install -d -m 0755 "$PREFIX/docs"
install -m 0644 "$SRC"/docs/*.md "$SRC"/docs/*.png "$PREFIX/docs/"

install -d -m 0755 "$ETC"
[ -f "$ETC/edge.toml" ] || install -m 0644 "$SRC/config/edge.toml" "$ETC/edge.toml"
if [ ! -f "$ETC/jwt-secret" ]; then
    (umask 077 && "$PREFIX/venv/bin/python" -c \
        'import secrets; print(secrets.token_urlsafe(48))' > "$ETC/jwt-secret")
fi
chmod 0600 "$ETC/jwt-secret"

# The data key, made once (a key is never overwritten: it would make the data
# unreadable; `edge keys rotate` replaces it).
dropin="[Service]"
if [ -f "$ETC/journal-key.jwe" ] || [ -n "${EDGE_KEY_TANG:-}${EDGE_KEY_TPM2:-}" ]; then
    if [ ! -f "$ETC/journal-key.jwe" ]; then
        args=()
        for url in ${EDGE_KEY_TANG:-}; do args+=(--tang "$url"); done
        for thp in ${EDGE_KEY_TANG_THP:-}; do args+=(--tang-thp "$thp"); done
        [ -n "${EDGE_KEY_TPM2:-}" ] && args+=(--tpm2)
        EDGE_STATE_DIR=$(mktemp -d) "$PREFIX/venv/bin/edge" keys init "${args[@]}" \
            --jwe "$ETC/journal-key.jwe" --config "$ETC/edge.toml"
    fi
    dropin+=$'\n'"LoadCredential=journal-key.jwe:$ETC/journal-key.jwe"
    if [ -n "${EDGE_KEY_TPM2:-}" ]; then
        dropin+=$'\n'"DeviceAllow=/dev/tpmrm0 rw"$'\n'"SupplementaryGroups=tss"
    fi
else
    if [ ! -f "$ETC/journal-key" ]; then
        EDGE_STATE_DIR=$(mktemp -d) "$PREFIX/venv/bin/edge" keys init \
            --file "$ETC/journal-key" --config "$ETC/edge.toml" >/dev/null
        echo "WARNING: the journal's key is a plain file, $ETC/journal-key, on this card:" \
             "for patient data re-install with EDGE_KEY_TANG=URL (or EDGE_KEY_TPM2=1)" \
             "and rotate (see docs/encryption.md)" >&2
    fi
    chmod 0600 "$ETC/journal-key"
    dropin+=$'\n'"LoadCredential=journal-key:$ETC/journal-key"
fi

install -d -m 0755 "$UNIT_DIR"
sed -e "s#/opt/edge#$PREFIX#g" -e "s#/etc/edge#$ETC#g" "$SRC/systemd/edge.service" \
    > "$UNIT_DIR/edge.service"
# MemoryHigh= and MemoryMax= from the config's memory budget and the model's measured
# share (edge check loads the model once to measure it).
if limits=$("$PREFIX/venv/bin/edge" check --config "$ETC/edge.toml" --memory-limits \
        2>/dev/null); then
    high=$(printf '%s\n' "$limits" | sed -n 's/^MemoryHigh=//p')
    max=$(printf '%s\n' "$limits" | sed -n 's/^MemoryMax=//p')
    sed -i -e "s/^MemoryHigh=.*/MemoryHigh=$high/" -e "s/^MemoryMax=.*/MemoryMax=$max/" \
        "$UNIT_DIR/edge.service"
    echo "memory limits: MemoryHigh=$high MemoryMax=$max (see: edge check)"
else
    echo "warning: could not compute the memory limits from $ETC/edge.toml; the unit" \
         "keeps those of the default budget (run: edge check)" >&2
fi
chmod 0644 "$UNIT_DIR/edge.service"
install -d -m 0755 "$UNIT_DIR/edge.service.d"
printf '%s\n' "$dropin" > "$UNIT_DIR/edge.service.d/journal-key.conf"
chmod 0644 "$UNIT_DIR/edge.service.d/journal-key.conf"

if [ -z "${NO_SYSTEMCTL:-}" ] && [ ! -d /run/systemd/system ]; then
    echo "systemd is not running here: installed $UNIT_DIR/edge.service, not started"
    NO_SYSTEMCTL=1
fi
if [ -z "${NO_SYSTEMCTL:-}" ]; then
    systemctl daemon-reload
    systemctl enable --now edge.service
    echo "edge is running: systemctl status edge; curl http://127.0.0.1:8000/healthz"
fi
echo "tokens: sudo EDGE_JWT_SECRET_FILE=$ETC/jwt-secret $PREFIX/venv/bin/edge token --sub NAME"
