#!/bin/sh
# Makes a throwaway CA with a server certificate (localhost, 127.0.0.1) and client
# certificates (their common name is the user they log in as with SASL EXTERNAL).
# For tests and trials only: the keys are unencrypted.
#
#   certs/make-test-ca.sh OUTDIR [CLIENT_NAME...]     (default client: alice)
#
# OUTDIR gets ca.pem, server.pem, server-key.pem, and NAME.pem, NAME-key.pem per client.
set -eu
out=${1:?usage: make-test-ca.sh OUTDIR [CLIENT_NAME...]}
shift
[ $# -gt 0 ] || set -- alice
mkdir -p "$out"
cd "$out"
days=825

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days "$days" \
    -subj "/CN=Clacks test CA" -keyout ca-key.pem -out ca.pem \
    -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null

# issue NAME SUBJECT EXTENSIONS: a key and a certificate signed by the CA.
issue() {
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
        -subj "$2" -keyout "$1-key.pem" -out "$1.csr" 2>/dev/null
    printf '%s\n' "$3" > "$1.ext"
    openssl x509 -req -in "$1.csr" -CA ca.pem -CAkey ca-key.pem -CAcreateserial \
        -days "$days" -extfile "$1.ext" -out "$1.pem" 2>/dev/null
    rm -f "$1.csr" "$1.ext"
    chmod 600 "$1-key.pem"
}

issue server "/CN=localhost" "basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=DNS:localhost,IP:127.0.0.1"

for name in "$@"; do
    issue "$name" "/CN=$name" "basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=clientAuth"
done
chmod 600 ca-key.pem
echo "test CA and certificates in $(pwd)"
