#!/usr/bin/env bash
# Makes a THROW-AWAY certificate set for meterd's ingest TLS, for tests and the demo (never for
# production: the CA key sits next to the certificates). ECDSA P-256, openssl CLI only.
#
#   scripts/make-certs.sh [--out DIR] [--meters N] [--prefix MTR-] [--first 1] [--meter ID]...
#                         [--concentrator ID] [--concentrator-only] [--days 30] [--expired ID]...
#
#   --out DIR           where the files go (default ./certs; created, existing files replaced)
#   --meters N          meters PREFIX + six digits from --first: MTR-000001 … (default 3)
#   --meter ID          a meter by its id (repeatable; replaces --meters)
#   --concentrator ID   the data concentrator's id (default DC-000001)
#   --concentrator-only no meter certificates, only the concentrator's (quicker for a large fleet)
#   --days N            validity of every certificate from now (default 30)
#   --expired ID        also a certificate for meter ID that expired in 2020 (for tests)
#
# Files in DIR:
#   ca.pem, ca.key                      the CA: meterd's ingest_tls_client_ca, meter-sim's --tls-ca
#   server.pem, server.key              meterd's ingest_tls_cert, ingest_tls_key (localhost, 127.0.0.1, ::1)
#   meters/<id>.pem, meters/<id>.key    one per meter, CN and SAN URI urn:meter:<id> (meter-sim --tls-cert-dir DIR/meters)
#   concentrator.pem, concentrator.key  SAN URI urn:concentrator:<id> (meter-sim --tls-cert/--tls-key)
#   concentrators.csv                   ConcentratorID,MeterID: every meter above on the concentrator
#                                       (meterctl import DIR loads it)
set -euo pipefail

out=./certs
count=3
prefix=MTR-
first=1
days=30
concentrator=DC-000001
meters=()
expired=()
meter_certs=1
while [ $# -gt 0 ]; do
    case "$1" in
        --out) out=$2; shift 2 ;;
        --meters) count=$2; shift 2 ;;
        --prefix) prefix=$2; shift 2 ;;
        --first) first=$2; shift 2 ;;
        --meter) meters+=("$2"); shift 2 ;;
        --concentrator) concentrator=$2; shift 2 ;;
        --concentrator-only) meter_certs=0; shift ;;
        --days) days=$2; shift 2 ;;
        --expired) expired+=("$2"); shift 2 ;;
        -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "make-certs.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
command -v openssl >/dev/null || { echo "make-certs.sh: needs the openssl CLI (apt-get install openssl)" >&2; exit 1; }
if [ ${#meters[@]} -eq 0 ]; then
    for ((n = first; n < first + count; n++)); do meters+=("$(printf '%s%06d' "$prefix" "$n")"); done
fi

mkdir -p "$out/meters"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# One config for every certificate; the SAN comes from the environment.
cat >"$work/openssl.cnf" <<'EOF'
[ req ]
distinguished_name = dn
prompt = no
[ dn ]
[ ca_ext ]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
[ server_ext ]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = DNS:localhost, IP:127.0.0.1, IP:::1
authorityKeyIdentifier = keyid
[ client_ext ]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = clientAuth
subjectAltName = ${ENV::CERT_SAN}
authorityKeyIdentifier = keyid
[ ca ]
default_ca = throwaway
[ throwaway ]
database = $ENV::CA_DIR/index.txt
new_certs_dir = $ENV::CA_DIR
serial = $ENV::CA_DIR/serial
default_md = sha256
policy = anything
unique_subject = no
[ anything ]
commonName = supplied
EOF
export CERT_SAN=URI:urn:meter:none CA_DIR="$work/ca"
mkdir -p "$CA_DIR"
: >"$CA_DIR/index.txt"
echo 1000 >"$CA_DIR/serial"

newkey=(-newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes)
openssl req -x509 "${newkey[@]}" -config "$work/openssl.cnf" -extensions ca_ext -days "$days" \
    -subj "/CN=meterd throw-away CA" -keyout "$out/ca.key" -out "$out/ca.pem" 2>/dev/null

# sign NAME SUBJECT EXTENSIONS KEY PEM: a new key and a certificate the CA signs, valid --days.
sign() {
    openssl req "${newkey[@]}" -config "$work/openssl.cnf" -subj "$2" -keyout "$4" -out "$work/$1.csr" 2>/dev/null
    openssl x509 -req -in "$work/$1.csr" -CA "$out/ca.pem" -CAkey "$out/ca.key" -CAserial "$work/ca.srl" -CAcreateserial \
        -days "$days" -sha256 -extfile "$work/openssl.cnf" -extensions "$3" -out "$5" 2>/dev/null
}

sign server "/CN=meterd" server_ext "$out/server.key" "$out/server.pem"
for meter in "${meters[@]}"; do
    [ "$meter_certs" = 1 ] || break
    CERT_SAN="URI:urn:meter:$meter" sign "$meter" "/CN=$meter" client_ext "$out/meters/$meter.key" "$out/meters/$meter.pem"
done
CERT_SAN="URI:urn:concentrator:$concentrator" sign concentrator "/CN=$concentrator" client_ext \
    "$out/concentrator.key" "$out/concentrator.pem"
for meter in "${expired[@]}"; do
    # openssl x509 -req cannot backdate; openssl ca can.
    openssl req "${newkey[@]}" -config "$work/openssl.cnf" -subj "/CN=$meter" -keyout "$out/meters/$meter.key" \
        -out "$work/expired.csr" 2>/dev/null
    CERT_SAN="URI:urn:meter:$meter" openssl ca -batch -notext -config "$work/openssl.cnf" -cert "$out/ca.pem" -keyfile "$out/ca.key" \
        -in "$work/expired.csr" -out "$out/meters/$meter.pem" -startdate 20200101000000Z -enddate 20200102000000Z \
        -extensions client_ext 2>/dev/null
done

{
    echo "ConcentratorID,MeterID"
    for meter in "${meters[@]}"; do echo "$concentrator,$meter"; done
} >"$out/concentrators.csv"
chmod 600 "$out"/*.key
find "$out/meters" -name '*.key' -exec chmod 600 {} +
echo "make-certs.sh: CA, server, $(find "$out/meters" -name '*.pem' | wc -l) meter and 1 concentrator certificates in $out (valid $days days)" >&2
