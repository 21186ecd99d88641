#!/bin/sh
# send.sh: send one message through imbridge and print the server's receipt.
# It uses mosquitto_rr, which publishes with an MQTT 5 response topic and
# waits for the answer there, so the receipt printed is this send's own.
#
# Needs: mosquitto_rr (Debian: apt-get install mosquitto-clients), a running
#        mqttd, and a token for the sender (go run ./mqttd token USER).
#
# Usage:  TOKEN=$(go run ./mqttd token alice) examples/scripts/send.sh alice bob 'hello'
#         ONLINE=1 TOKEN=... examples/scripts/send.sh alice bob     # typing indicator
#
# Env: HOST (127.0.0.1), PORT (1883), TOKEN (required), ONLINE (empty: a
#      stored message with {"text": TEXT}; non-empty: online-only
#      {"command":"textInput"}).
set -eu
from=${1:?usage: send.sh FROM TO [TEXT]}
to=${2:?usage: send.sh FROM TO [TEXT]}
text=${3:-hello}
: "${TOKEN:?set TOKEN to a token of $from (go run ./mqttd token $from)}"

if [ -n "${ONLINE:-}" ]; then
  body='{"to":"'"$to"'","onlineUserOnly":true,"data":{"command":"textInput"}}'
else
  # TEXT goes into JSON as it is: keep it free of quotes and backslashes.
  body='{"to":"'"$to"'","data":{"text":"'"$text"'"}}'
fi

exec mosquitto_rr -V 5 -h "${HOST:-127.0.0.1}" -p "${PORT:-1883}" -u "$from" -P "$TOKEN" \
  -q 1 -t "users/$from/send" -e "users/$from/reply/rr-$$" -W 10 -m "$body"
